"""The shared target-macs allocator: least cost per MAC first, stops at the target."""

from __future__ import annotations

from lightir.analysis.budget import allocate


def steps(costs: dict[str, list[float]], saving: float = 10.0):
    """Each item saves ``saving`` MACs a level, at the listed costs per level."""

    def propose(item, levels, current):
        level = levels[item]
        if level >= len(costs[item]):
            return None
        return costs[item][level] / saving, current - saving

    return propose


def test_cheapest_steps_first_until_the_target():
    costs = {"a": [1.0, 5.0, 9.0], "b": [2.0, 3.0, 4.0]}
    levels, met = allocate(costs, 100.0, 60.0, steps(costs))
    assert met and levels == {"a": 1, "b": 3}  # 1, 2, 3, 4: the next ones cost 5 and up


def test_ties_go_to_the_earlier_item_and_nothing_moves_at_the_target():
    costs = {"a": [1.0], "b": [1.0]}
    assert allocate(costs, 100.0, 90.0, steps(costs)) == ({"a": 1, "b": 0}, True)
    assert allocate(costs, 100.0, 100.0, steps(costs)) == ({"a": 0, "b": 0}, True)


def test_an_unreachable_target_says_so_after_taking_every_step():
    costs = {"a": [1.0, 2.0], "b": [3.0]}
    levels, met = allocate(costs, 100.0, 10.0, steps(costs))
    assert not met and levels == {"a": 2, "b": 1}
