"""Least-squares refits: pulled toward the current weights, validated where ill posed."""

from __future__ import annotations

import numpy as np

from lightir.reconstruct import RIDGE, _validated_ridge, ridge_solve


def _problem(rows: int, inputs: int = 64, outputs: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((inputs + 1, outputs))
    prior = truth + 0.1 * rng.standard_normal(truth.shape)  # the pruned layer: close to right

    def sample(n):
        x = rng.standard_normal((n, inputs))
        return x, np.concatenate([x, np.ones((n, 1))], axis=1) @ truth

    return prior, sample(rows), sample(400)


def _error(w, data):
    x, y = data
    return float(np.mean((np.concatenate([x, np.ones((len(x), 1))], axis=1) @ w - y) ** 2))


def test_an_ill_posed_refit_is_pulled_toward_the_current_weights():
    """16 rows for 65 unknowns (a Gemm after a Flatten on a few images): a ridge toward zero
    keeps only the rows' span and loses the rest of the layer; toward the current weights it
    corrects the residual in that span and keeps the rest."""
    prior, (x, y), unseen = _problem(rows=16)
    toward_zero = ridge_solve(x, y)
    toward_prior = ridge_solve(x, y, prior=prior)
    assert _error(toward_prior, unseen) < _error(prior, unseen) < _error(toward_zero, unseen)
    assert _validated_ridge(x, y, True, None, prior) is not None  # the data do help here


def test_a_well_posed_refit_uses_the_small_ridge_and_an_exact_layer_keeps_its_weights():
    prior, (x, y), _ = _problem(rows=400)
    assert _validated_ridge(x, y, True, None, prior) == RIDGE
    _, (x, _), _ = _problem(rows=16)
    exact = np.concatenate([x, np.ones((16, 1))], axis=1) @ prior
    assert _validated_ridge(x, exact, True, None, prior) is None  # nothing a refit could add
