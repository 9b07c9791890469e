"""Least-squares refits: pulled toward the current weights, validated where ill posed."""

from __future__ import annotations

import numpy as np

from lightir.analysis.reconstruct import RIDGE, Moments, RemovalCost, _validated_ridge, ridge_solve


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


def _residual(x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared residual of the least-squares fit of y on [x, 1]."""
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    w = np.linalg.lstsq(a, y, rcond=None)[0]
    return float(np.mean((a @ w - y) ** 2))


def _correlated_layer(seed: int = 1):
    """Six channels of two columns each; channel 3 is nearly channel 0 plus channel 1."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2000, 12)) + 0.5
    x[:, 6:8] = x[:, 0:2] + x[:, 2:4] + 0.01 * rng.standard_normal((2000, 2))
    weight = rng.standard_normal((12, 5))
    weight[6:8] *= 4.0  # the redundant channel has the largest weights: l1 keeps it
    blocks = {k: np.arange(2 * k, 2 * k + 2) for k in range(6)}
    return x, weight, blocks


def test_removal_cost_with_refit_is_the_refit_residual_and_follows_each_removal():
    """The OBS cost of removing a channel is what the least-squares refit cannot recover,
    and after a removal the next costs are those of the layer refit without it."""
    x, weight, blocks = _correlated_layer()
    y = x @ weight
    cost = RemovalCost(Moments.of(x), weight, blocks, refit=True)
    variance = float(np.sum(np.var(y, axis=0))) / y.shape[1]

    def expected(removed):
        keep = np.concatenate([blocks[k] for k in range(6) if k not in removed])
        return _residual(x[:, keep], y) / variance

    first = cost.costs(range(6))
    # atol: the selection's ridge (RIDGE x mean diagonal of the Gram) costs ~1e-4 of the
    # variance, which a plain least-squares residual does not have.
    np.testing.assert_allclose(first, [expected({k}) for k in range(6)], rtol=1e-2, atol=5e-4)
    assert int(np.argmin(first)) in (0, 1, 3)  # any one of the dependent three, not by weight
    chosen = int(np.argmin(first))
    cost.remove(chosen)
    rest = [k for k in range(6) if k != chosen]
    after = first[chosen] + cost.costs(rest)
    np.testing.assert_allclose(after, [expected({chosen, k}) for k in rest], rtol=1e-2, atol=1e-6)


def test_removal_cost_without_refit_is_the_variance_of_what_the_set_contributed():
    x, weight, blocks = _correlated_layer()
    cost = RemovalCost(Moments.of(x), weight, blocks, refit=False)
    variance = float(np.sum(np.var(x @ weight, axis=0))) / weight.shape[1]

    def expected(removed):
        columns = np.concatenate([blocks[k] for k in removed])
        return float(np.sum(np.var(x[:, columns] @ weight[columns], axis=0))) / 5 / variance

    np.testing.assert_allclose(cost.costs(range(6)), [expected([k]) for k in range(6)], rtol=1e-9)
    cost.remove(2)
    total = expected([2]) + cost.costs([0, 4])
    np.testing.assert_allclose(total, [expected([2, 0]), expected([2, 4])], rtol=1e-9)


def test_an_ill_posed_layer_is_costed_without_the_refit():
    """Fewer than two rows per unknown: the refit would keep the weights (see
    ``_validated_ridge``), so the removal is costed as the compensation alone."""
    x, weight, blocks = _correlated_layer()
    few = x[:10]
    assert not RemovalCost(Moments.of(few), weight, blocks, refit=True).refit
    np.testing.assert_allclose(
        RemovalCost(Moments.of(few), weight, blocks, refit=True).costs(range(6)),
        RemovalCost(Moments.of(few), weight, blocks, refit=False).costs(range(6)),
    )


def _refit(pipeline: str, model_name: str, monkeypatch, frontier: int):
    import lightir
    from lightir.analysis import reconstruct
    from lightir.data import CalibrationData, input_specs
    from lightir.onnx_bridge import capture as real

    monkeypatch.setattr(reconstruct, "FRONTIER_BYTES", frontier)
    runs = []
    monkeypatch.setattr(reconstruct, "capture", lambda *a: runs.append(a[1]) or real(*a))
    model = lightir.optimize(f"zoo:{model_name}", "fold-bn,cleanup").model
    shape = input_specs(model)[0].shape
    rng = np.random.default_rng(0)
    images = rng.standard_normal((24, *shape[1:])).astype(np.float32)
    result = lightir.optimize(
        model, pipeline, calib=CalibrationData({"input": images}), verify="structural"
    )
    weights = {
        name: value.const_value.numpy()
        for name, value in result.model.graph.initializers.items()
        if value.const_value is not None
    }
    return weights, runs


def test_refit_walks_the_graph_segment_by_segment_and_fits_what_whole_runs_fit(monkeypatch):
    """Each layer's input comes from the nodes between it and the layer before, fed with the
    values that cross (residual skips included): the same weights as one whole run per
    layer, from one run of the original for the first frontier."""
    for model_name, pipeline in (
        ("resnet", "prune{ratio=0.5,round=1,refit=true}"),
        ("mobilenetv2", "svd{energy=0.8,refit=true}"),
    ):
        walked, walk_runs = _refit(pipeline, model_name, monkeypatch, 96 << 20)
        whole, whole_runs = _refit(pipeline, model_name, monkeypatch, 0)
        assert walked.keys() == whole.keys()
        for name, array in whole.items():
            np.testing.assert_allclose(walked[name], array, rtol=1e-4, atol=1e-5, err_msg=name)
        layer_inputs = [names for names in whole_runs if len(names) == 1]
        assert len(layer_inputs) > 3  # without a frontier: a whole run per refit layer
        assert len(walk_runs) < len(whole_runs) - len(layer_inputs) + 3, model_name


def test_removal_cost_of_single_columns_is_the_refit_residual_too():
    """One column per candidate takes the division, not the solve: same costs, same order."""
    x, weight, _ = _correlated_layer()
    blocks = {k: np.array([k]) for k in range(x.shape[1])}
    y = x @ weight
    variance = float(np.sum(np.var(y, axis=0))) / y.shape[1]
    cost = RemovalCost(Moments.of(x), weight, blocks, refit=True)
    first = cost.costs(range(len(blocks)))
    for k in blocks:
        keep = [c for c in blocks if c != k]
        np.testing.assert_allclose(first[k], _residual(x[:, keep], y) / variance, atol=5e-4)
    # The solve on the same single columns, stacked as the blocks of two do it.
    inverse = cost.inverse[np.arange(len(blocks)), np.arange(len(blocks))][:, None, None]
    solved = np.linalg.solve(inverse, weight[:, None, :])
    reference = np.einsum("mbo,mbo->m", weight[:, None, :], solved) / cost.energy
    np.testing.assert_allclose(first, reference, rtol=1e-10)
