"""The greedy budget allocator that prune and the low-rank passes share (``target-macs``).

Each item (a channel group, a layer) has levels of compression (0: untouched). Starting from
all zeros, the allocator repeatedly raises the one item whose next level costs the least per
MAC saved, until the model's MACs reach the target or no item can go further. What "cost"
means is the caller's: the weight error a factorization adds, the output error a pruning
step was measured to add, or the importance of the channels it removes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable


def allocate(
    items: Iterable[Hashable],
    total: float,
    target: float,
    propose: Callable[[Hashable, dict, float], tuple[float, float] | None],
    trace: list | None = None,
) -> tuple[dict, bool]:
    """Levels for ``items`` that bring ``total`` MACs down to ``target``, least cost first.

    ``propose(item, levels, current)`` returns ``(cost, macs_after)`` for raising ``item`` one
    level from ``levels`` (the current level of every item; ``current`` MACs), or None when it
    cannot go further.
    Returns the levels and whether the target was met; ties go to the earlier item.
    ``trace``, when given, receives every step taken as ``(item, new level, macs after)``.
    """
    levels = {item: 0 for item in items}
    current = total
    while current > target:
        best, best_cost, best_after = None, math.inf, current
        for item in levels:
            proposal = propose(item, levels, current)
            if proposal is not None and proposal[0] < best_cost:
                best, (best_cost, best_after) = item, proposal
        if best is None:
            return levels, False
        levels[best] += 1
        current = best_after
        if trace is not None:
            trace.append((best, levels[best], current))
    return levels, True
