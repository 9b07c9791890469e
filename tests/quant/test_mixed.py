"""The mixed-precision search's arithmetic: the smallest-count search and the held-out halves."""

from __future__ import annotations

import numpy as np

from lightir.quant.mixed import _halves, _smallest


def test_the_smallest_count_search_and_the_held_out_halves():
    for need in (1, 2, 5, 17, 23):
        assert _smallest(lambda c, n=need: c >= n, 0, 23) == need
    assert _smallest(lambda c: c >= 24, 0, 23) is None  # beyond the limit: say so
    assert _smallest(lambda c: c >= 2, 3, 23) == 4  # counts up to low already failed
    rows = [{"x": np.arange(8).reshape(8, 1)}, {"x": np.arange(8, 16).reshape(8, 1)}]
    fit, confirm = _halves(rows)
    seen = np.concatenate([b["x"] for b in fit + confirm]).ravel()
    assert sorted(seen) == list(range(16)) and len(fit) == len(confirm) == 2
    singles = [{"x": np.full((1, 1), i)} for i in range(5)]  # a model with a fixed batch of 1
    fit, confirm = _halves(singles)
    assert [int(b["x"][0, 0]) for b in fit] == [0, 2, 4]
    assert [int(b["x"][0, 0]) for b in confirm] == [1, 3]
