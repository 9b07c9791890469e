"""The factorizations themselves: exact recovery and the CP divergence guard."""

from __future__ import annotations

import numpy as np
import pytest

from lightir.lowrank.factor import Unstable, cp_factors, svd_factors

RNG = np.random.default_rng(0)


def test_known_rank_matrix_is_recovered_exactly():
    matrix = RNG.standard_normal((40, 6)) @ RNG.standard_normal((6, 50))
    assert svd_factors(matrix, 6)[2] < 1e-12
    assert svd_factors(matrix, 5)[2] > 1e-2


def test_cp_guard_declines_a_kernel_it_cannot_decompose():
    kernel = RNG.standard_normal((16, 16, 3, 3))
    kernel[0, 0, 0, 0] = np.inf
    with pytest.raises(Unstable):
        cp_factors(kernel, 4)
