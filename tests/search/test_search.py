"""The search's drop: what got worse counts, what got better does not offset it."""

from __future__ import annotations

import numpy as np
import pytest

from lightir import metrics
from lightir.search.search import worse


def test_a_sample_gained_does_not_hide_a_sample_lost():
    labels = np.array([0, 1, 1, 0])
    reference = {"y": np.array([[1.0, 0], [0, 1], [1, 0], [1, 0]])}  # 3 of 4 right
    outputs = {"y": np.array([[1.0, 0], [1, 0], [0, 1], [1, 0]])}  # loses #1, gains #2
    top1 = metrics.resolve("top1")
    assert top1.value(outputs, reference, labels) == top1.value(reference, reference, labels)
    assert worse(top1, outputs, reference, labels) == pytest.approx(0.25)
    assert worse(metrics.resolve("agreement"), outputs, reference, None) == pytest.approx(0.5)


def test_a_plug_in_metric_drops_by_its_value():
    def mean_output(outputs, reference, labels):
        return float(np.mean(outputs["y"]))

    metric = metrics.resolve(mean_output)
    reference, outputs = {"y": np.ones((4, 2))}, {"y": np.full((4, 2), 0.75)}
    assert worse(metric, outputs, reference, None) == pytest.approx(0.25)


def test_a_per_sample_plug_in_counts_only_what_got_worse():
    def agrees(outputs, reference, labels):
        return (outputs["y"].argmax(axis=1) == reference["y"].argmax(axis=1)).astype(float)

    metric = metrics.resolve(agrees)
    reference = {"y": np.array([[1.0, 0], [0, 1], [1, 0], [1, 0]])}
    outputs = {"y": np.array([[1.0, 0], [1, 0], [0, 1], [1, 0]])}
    assert worse(metric, outputs, reference, None) == pytest.approx(0.5)
    score = metric.score(outputs, reference, None)
    assert score.value == 0.5 and score.samples == 4
    assert (score.low, score.high) == pytest.approx(metrics._wilson(0.5, 4))  # 0/1 values


def test_a_plug_in_returning_the_wrong_number_of_values_is_a_usage_error():
    metric = metrics.resolve(lambda outputs, reference, labels: np.ones(3))
    with pytest.raises(metrics.UsageError, match="returned 3 values for 4 samples"):
        metric.score({"y": np.ones((4, 2))}, {"y": np.ones((4, 2))}, None)


def test_a_candidate_timed_faster_alone_is_timed_again_beside_the_best():
    """Separate timings of a model of microseconds drift by more than candidates differ: a
    candidate within the margin of the best is timed interleaved with it before it wins."""
    import lightir
    from lightir import zoo
    from lightir.data import CalibrationData, input_specs
    from lightir.pass_base import PassContext
    from lightir.search.latency import LatencyTable
    from lightir.search.search import Point, Search
    from lightir.search.space import Space, name_nodes

    original = zoo.digits()
    images, labels = zoo.digits_test_split()
    calib = CalibrationData({"input": images[:64]}, labels=labels[:64])
    pruned = lightir.optimize(original, "prune{ratio=0.6}", verify="structural").model
    name_nodes(original)
    data = calib.bind(input_specs(original))
    space = Space(original, LatencyTable("latency"), PassContext(data), kinds=("int8",))
    search = Search(space, metrics.resolve("top1"), data, max_drop=0.01, time_limit=60)
    best = Point(0, 1.0, 1e-3, 0.0, {}, True, model=pruned)
    search.best = best
    # The original, claimed 5% faster than its pruned copy (about 1.8x faster in truth).
    candidate = Point(0, 1.0, 0.95e-3, 0.0, {}, True)
    assert not search._faster(candidate, original)
    # The candidate's figure is now the best's times the side-by-side ratio (about 1.8).
    assert best.measured == 1e-3 and candidate.measured > 1.3e-3
    # Claimed 30% slower: no duel, no new figure.
    slower = Point(0, 1.0, best.measured * 1.3, 0.0, {}, True)
    assert not search._faster(slower, original) and slower.measured == best.measured * 1.3


def test_ablation_tries_the_best_without_its_int8_layers():
    """The best point holds pruning and int8; ablate evaluates it without the int8 layers,
    and a kind it does not hold (low-rank) is not tried."""
    from lightir import zoo
    from lightir.data import CalibrationData, input_specs
    from lightir.pass_base import PassContext
    from lightir.search.latency import LatencyTable
    from lightir.search.search import Search
    from lightir.search.space import Space, name_nodes

    model = zoo.digits()
    name_nodes(model)
    images, labels = zoo.digits_test_split()
    data = CalibrationData({"input": images[:64]}, labels=labels[:64]).bind(input_specs(model))
    space = Space(model, LatencyTable("macs"), PassContext(data), kinds=("prune", "int8"))
    search = Search(space, metrics.resolve("top1"), data, max_drop=1.0, time_limit=60)
    prune = next(i for i, u in enumerate(space.units) if u.kind == "prune")
    int8 = [i for i, u in enumerate(space.units) if u.kind == "int8"]
    best = search.evaluate(0, {prune: 1, **{i: 1 for i in int8}}, single="mixed")
    assert search.best is best
    dropped = search.ablate()
    tried = [p for p in search.points if p.single == "mixed without int8"]
    assert len(tried) == 1 and tried[0].choice == {prune: 1}
    assert not any("lowrank" in p.single for p in search.points)
    # Under MACs int8 counts the same MACs: without it is not cheaper, so the best stands.
    assert search.best is best and dropped == set()


def test_probes_are_taken_from_the_probe_rows_not_the_selection():
    """The sensitivity's probe rows come from ``probe_data`` (compress: its fit rows), inputs
    and labels, so the path is not ordered by the rows that then judge it."""
    from lightir import zoo
    from lightir.data import CalibrationData, input_specs
    from lightir.pass_base import PassContext
    from lightir.search.latency import LatencyTable
    from lightir.search.search import Search
    from lightir.search.space import Space, name_nodes

    model = zoo.digits()
    name_nodes(model)
    images, labels = zoo.digits_test_split()
    data = CalibrationData({"input": images[:64]}, labels=labels[:64]).bind(input_specs(model))
    selection, fit = data.head(32), data.tail(32)
    space = Space(model, LatencyTable("macs"), PassContext(fit), kinds=("prune",))
    search = Search(
        space, metrics.resolve("top1"), selection, max_drop=0.01, time_limit=60, probe_data=fit
    )
    probed = np.concatenate([batch["input"] for batch in search.probe])
    assert search.probe_rows == 32
    np.testing.assert_array_equal(probed, images[32:64])
    np.testing.assert_array_equal(search.probe_labels, labels[32:64])
    assert not np.array_equal(search.probe_labels, labels[:32])  # the test can tell them apart


def test_an_int8_layer_is_priced_at_the_unfavourable_end_of_its_timing(monkeypatch):
    """Under latency, each int8 layer's price is its whole-model paired difference plus the
    95% half-width: a saving the timings cannot show is not counted, and such a level
    leaves the path. The timing is replaced by a fixed figure (+5 us, half-width 2 us)."""
    from lightir import zoo
    from lightir.data import CalibrationData, input_specs
    from lightir.pass_base import PassContext
    from lightir.search import search as search_module
    from lightir.search.latency import LatencyTable
    from lightir.search.space import Space, name_nodes

    model = zoo.digits()
    name_nodes(model)
    images, labels = zoo.digits_test_split()
    data = CalibrationData({"input": images[:32]}, labels=labels[:32]).bind(input_specs(model))
    space = Space(model, LatencyTable("latency"), PassContext(data), kinds=("int8",))
    monkeypatch.setattr(search_module, "paired_difference", lambda *a, **k: (5e-6, 2e-6))
    search = search_module.Search(
        space, metrics.resolve("top1"), data, max_drop=0.01, time_limit=60
    )
    search.sensitivity()
    int8 = [u for u in space.units if u.kind == "int8"]
    assert int8 and all(u.measured for u in int8)
    assert all(lv.delta == pytest.approx(7e-6) for u in int8 for lv in u.measured)
    assert not any(u.levels for u in int8)  # no saving: no level for the path


def test_bisection_leaves_the_single_passes_their_time(monkeypatch):
    """Candidates take 10 s each on a clock the test moves, and there is time for the single
    passes' reserve and a little more: the path's bisection evaluates one prefix, and every
    family of single passes still gets its candidates; the report says the bisection was
    cut short."""
    import time
    from types import SimpleNamespace

    from lightir.search import search as search_module
    from lightir.search.search import _bisection_tries, _reserve

    space, search = _digits_search(("prune", "lowrank"))
    search.sensitivity()
    search.plan_path()
    assert len(search.path) > 4
    families = space.families()
    reserve = _reserve(families)
    assert reserve == sum(_bisection_tries(len(s)) for _, _, s in families) + 1  # and combine
    late = [0.0]
    frozen = time.perf_counter()  # the test's clock moves only by the candidates' 10 s
    monkeypatch.setattr(
        search_module, "time", SimpleNamespace(perf_counter=lambda: frozen + late[0])
    )
    run = search._outputs

    def slow(model, batches):  # a candidate's run, 10 s on the test's clock
        late[0] += 10.0
        return run(model, batches)

    search._outputs = slow
    search.deadline = search_module.time.perf_counter() + 10.0 + (reserve + 1.5) * 10.0
    search.front()  # the original takes 10 s too
    points = [(p.steps, p.extra, p.single) for p in search.points]
    path_points = [p for p in search.points if not p.single and p.steps and not p.extra]
    assert len(path_points) == 1, points
    singles = [p.single for p in search.points if p.single and "without" not in p.single]
    tried = {single.rpartition(" ")[0] or single for single in singles if " + " not in single}
    assert tried == {method or kind for kind, method, _ in families} and len(tried) >= 2
    assert any(" + " in single for single in singles)  # the reserve covers combine too
    # The first family had no time to spare for all its settings: bisected, from the middle.
    kind, method, strengths = sorted(families, key=lambda f: len(f[2]))[0]
    assert singles[0] == f"{method or kind} {strengths[len(strengths) // 2]:g}"
    assert "the path bisected" in search.interrupted


def test_the_single_pass_winners_of_different_kinds_are_tried_together():
    """Prune's and a low-rank method's strongest settings within budget are joined into one
    candidate; a kind with no setting within budget is not."""

    space, search = _digits_search(("prune", "lowrank"))
    search.sensitivity()
    search.plan_path()
    search.evaluate(0)
    search.single_passes()
    within = [p for p in search.points if p.single and p.meets and p.confirmed]
    kinds = {space.units[next(iter(p.choice))].kind for p in within}
    assert kinds == {"prune", "lowrank"}
    before = len(search.points)
    search.combine()
    (union,) = [p for p in search.points[before:] if " + " in p.single]
    first, second = union.single.split(" + ")
    parts = [next(p for p in within if p.single == label) for label in (first, second)]
    assert union.choice == {**parts[0].choice, **parts[1].choice}
    assert parts[0].measured <= parts[1].measured  # from the fastest kind's winner

    # Only one kind within budget (the low-rank points made to break it): nothing to join.
    for point in search.points:
        if point.single and space.units[next(iter(point.choice))].kind == "lowrank":
            point.meets = False
    before = len(search.points)
    search.combine()
    assert len(search.points) == before


def test_a_single_pass_changes_the_units_a_cut_short_sensitivity_left_unmeasured():
    """With no time for the sensitivity, no level is measured and the path is empty, but
    prune and int8 on every layer still change every unit they would."""
    import time

    space, search = _digits_search(("prune", "int8"))
    search.deadline = time.perf_counter()  # the sensitivity's share of nothing
    search.sensitivity()
    assert "sensitivity measured 0 of" in search.interrupted
    assert all(not unit.levels for unit in space.units)
    for kind, strength in (("prune", 0.5), ("int8", 1.0)):
        units = {i for i, unit in enumerate(space.units) if unit.kind == kind}
        assert units and set(space.uniform(kind, None, strength)) == units


def test_a_candidate_that_breaks_the_guard_is_not_within_budget():
    """The guard (the pass's contract on the selection rows) refuses candidates the metric
    lets through; the answer is then one the guard accepts."""
    space, search = _digits_search(("prune", "lowrank"))

    def cosine(a, b) -> float:
        a, b = a.ravel(), b.ravel()
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    def strict(outputs, reference):
        worst = min(cosine(outputs[k], reference[k]) for k in reference)
        return [] if worst >= 0.999 else [f"cosine {worst:.4f} < 0.999"]

    search.guard = strict
    search.sensitivity()
    search.plan_path()
    best = search.front()
    refused = [p for p in search.points if p.broken]
    assert refused and all(not p.meets and not p.confirmed for p in refused)
    assert all(p.drop <= search.max_drop for p in refused)  # the metric alone let them by
    assert "breaks_contract" in refused[0].as_dict("macs")
    assert not best.broken
    if best.choice:
        model, _ = space.apply(best.choice)
        assert strict(search._outputs(model, search.selection), search.reference) == []


def _digits_search(kinds: tuple[str, ...]):
    """The digits fixture's space (MACs objective) and a search on 64 labelled samples."""
    from lightir import zoo
    from lightir.data import CalibrationData, input_specs
    from lightir.pass_base import PassContext
    from lightir.search.latency import LatencyTable
    from lightir.search.search import Search
    from lightir.search.space import Space, name_nodes

    model = zoo.digits()
    name_nodes(model)
    images, labels = zoo.digits_test_split()
    data = CalibrationData({"input": images[:64]}, labels=labels[:64]).bind(input_specs(model))
    space = Space(model, LatencyTable("macs"), PassContext(data), kinds=kinds)
    search = Search(space, metrics.resolve("top1"), data, max_drop=0.05, time_limit=600)
    return space, search
