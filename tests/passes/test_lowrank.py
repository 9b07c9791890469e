"""svd, spatial-svd, tucker and cp: exact recovery, budgets, declines, refit."""

from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir import zoo
from lightir.analysis.reconstruct import clamp_after, ridge_solve
from lightir.data import CalibrationData
from lightir.lowrank.factor import cp_factors, tucker2_factors
from lightir.testing import GraphBuilder, assert_outputs_close, declines, op_types

RNG = np.random.default_rng(0)


def conv_with_kernel(kernel, stride=1, size=12):
    cout, cin, kh, kw = kernel.shape
    b = GraphBuilder("layer", seed=1)
    x = b.input("x", ["batch", cin, size, size])
    weight = b.initializer(kernel.astype(np.float32))
    y = b.conv(x, cout, (kh, kw), stride=stride, weight=weight, bias=True)
    b.output(y, "y")
    return b.build()


def test_spatially_separable_kernel_is_recovered():
    vertical = RNG.standard_normal((3, 16, 3))
    horizontal = RNG.standard_normal((32, 3, 3))
    kernel = np.einsum("riy,orx->oiyx", vertical, horizontal)
    model = conv_with_kernel(kernel, stride=2)
    result = lightir.optimize(model, "spatial-svd{rank=3}")
    assert result.report.ok, result.report.failures
    assert op_types(result.model) == ["Conv", "Conv"]
    assert result.report.records[0].stats["layers"]["conv_0"]["weight_error"] < 1e-6
    assert_outputs_close(model, result.model, rtol=1e-5)


def test_tucker_kernel_is_recovered():
    core = RNG.standard_normal((8, 8, 3, 3))
    kernel = np.einsum(
        "sryx,os,ir->oiyx", core, RNG.standard_normal((32, 8)), RNG.standard_normal((32, 8))
    )
    assert tucker2_factors(kernel, 8, 8)[3] < 1e-12
    model = conv_with_kernel(kernel)
    result = lightir.optimize(model, "tucker{rank=8,round=1}")
    assert result.report.ok, result.report.failures
    assert op_types(result.model) == ["Conv", "Conv", "Conv"]
    assert_outputs_close(model, result.model, rtol=1e-5)


def test_cp_kernel_is_recovered():
    factors = [RNG.standard_normal((n, 3)) for n in (24, 16, 3, 3)]
    kernel = np.einsum("or,ir,yr,xr->oiyx", *factors)
    assert cp_factors(kernel, 3, sweeps=300)[1] < 1e-8
    model = conv_with_kernel(kernel)
    result = lightir.optimize(model, "cp{rank=3,round=1,sweeps=300}")
    assert result.report.ok, result.report.failures
    assert op_types(result.model) == ["Conv"] * 4
    assert_outputs_close(model, result.model, rtol=1e-5)


def test_never_factorizes_when_not_cheaper():
    model = conv_with_kernel(RNG.standard_normal((4, 3, 3, 3)))
    result = lightir.optimize(model, "tucker{rank=4,round=1}")
    assert result.report.records[0].status == "unchanged"
    assert any("not cheaper" in d for d in declines(result))


@pytest.mark.parametrize("method", ["tucker", "spatial-svd"])
def test_target_macs_half_on_resnet_within_two_percent(method):
    result = lightir.optimize(
        "zoo:resnet", f"{method}{{target-macs=0.5}}", tolerances={method: "cos:-1"}
    )
    ratio = result.report.records[0].cost.macs / result.report.original.macs
    assert abs(ratio - 0.5) <= 0.02 * 0.5, ratio


def test_ratio_of_macs_differs_from_ratio_of_params_on_strided_layers():
    layers = {}
    for of in ("params", "macs"):
        result = lightir.optimize(
            "zoo:resnet",
            f"spatial-svd{{ratio=0.4,ratio-of={of}}}",
            tolerances={"spatial-svd": "cos:-1"},
        )
        layers[of] = result.report.records[0].stats["layers"]
        assert layers[of] and all(v[f"{of}_ratio"] <= 0.4 for v in layers[of].values())
    # The strided layers: their first kx1 conv runs at full height, so MACs fall slower.
    assert any(v["macs_ratio"] > 0.4 for v in layers["params"].values())
    assert any(layers["macs"][k]["rank"] < v["rank"] for k, v in layers["params"].items())


def test_svd_on_gemm_and_its_budget():
    model = lightir.optimize("zoo:vgg", "fold-bn").model
    result = lightir.optimize(model, "svd{ratio=0.5}", tolerances={"svd": "cos:-1"})
    assert result.report.ok
    layers = result.report.records[0].stats["layers"]
    assert layers and all(v["params_ratio"] <= 0.5 for v in layers.values())
    tight = lightir.optimize(model, "svd{rank=2}")
    assert not tight.report.ok and "cos>=0.9" in tight.report.failures[0]  # budget enforced


def test_refit_beats_plain_truncation_on_the_fixture():
    images, labels = zoo.digits_test_split()
    calib = CalibrationData({"input": images[:200]})
    model = lightir.optimize("zoo:digits", "fold-bn").model
    plain = lightir.optimize(model, "spatial-svd{rank=16}", tolerances={"spatial-svd": "cos:-1"})
    refit = lightir.optimize(
        model, "spatial-svd{rank=16,refit=true}", calib=calib, tolerances={"spatial-svd": "cos:-1"}
    )
    assert plain.report.records[0].cost.macs == refit.report.records[0].cost.macs
    assert (
        zoo.accuracy(refit.model, images[200:], labels[200:])
        > zoo.accuracy(plain.model, images[200:], labels[200:]) + 0.03
    )


def _relu_loss(a, w, y):
    prediction = np.concatenate([a, np.ones((len(a), 1))], axis=1) @ w
    return np.linalg.norm(np.maximum(prediction, 0) - np.maximum(y, 0))


def test_fit_through_relu_lowers_the_post_activation_error_on_held_out_rows():
    x = RNG.normal(size=(4000, 24))
    y = x @ RNG.normal(size=(24, 6)) + 0.5 * RNG.normal(size=6) - 1.0
    train, test = slice(0, 2000), slice(2000, None)
    few = x[:, :12]  # a layer that sees only half of what produced y: the fit is inexact
    linear = ridge_solve(few[train], y[train])
    through = ridge_solve(few[train], y[train], bounds=(0.0, np.inf))
    for rows in (train, test):
        assert _relu_loss(few[rows], through, y[rows]) < 0.97 * _relu_loss(
            few[rows], linear, y[rows]
        )
    # Where nothing is clamped, the two fits agree.
    lifted = y + 100.0
    np.testing.assert_allclose(
        ridge_solve(few, lifted, bounds=(0.0, np.inf)), ridge_solve(few, lifted), rtol=1e-9
    )


def test_refit_act_goes_through_a_relu_only_when_it_is_the_sole_consumer():
    images, _ = zoo.digits_test_split()
    calib = CalibrationData({"input": images[:64]})
    model = lightir.optimize("zoo:digits", "fold-bn").model
    options = "spatial-svd{rank=16,refit=true,refit-act=true}"
    result = lightir.optimize(model, options, calib=calib, tolerances={"spatial-svd": "cos:-1"})
    layers = result.report.records[0].stats["layers"]
    assert layers and all(v["refit"] == "through clip(0.0, inf)" for v in layers.values())
    assert all(0 < v["output_error"] < 1 for v in layers.values())
    relu = next(n for n in result.model.graph if n.op_type == "Relu")
    assert clamp_after(relu.inputs[0].producer()) == (0.0, np.inf)
    # A second consumer of the conv output: the pre-activation values matter, no clamp.
    b = GraphBuilder("two-consumers")
    y = b.conv(b.input("x", [1, 3, 8, 8]), 4)
    b.output(b.add(b.relu(y), y), "out")
    assert clamp_after(y.producer()) is None
    b = GraphBuilder("relu6")
    y = b.conv(b.input("x", [1, 3, 8, 8]), 4)
    b.output(b.relu6(y), "out")
    assert clamp_after(y.producer()) == (0.0, 6.0)


def test_tol_policy_needs_data_and_meets_the_layer_tolerance():
    images, _ = zoo.digits_test_split()
    calib = CalibrationData({"input": images[:200]})
    model = lightir.optimize("zoo:digits", "fold-bn").model
    with pytest.raises(lightir.UsageError, match=r"tucker\{tol\} needs calibration data"):
        lightir.optimize(model, "tucker{tol=0.1}")
    result = lightir.optimize(
        model, "tucker{tol=0.05}", calib=calib, tolerances={"tucker": "cos:-1"}
    )
    assert result.report.ok
    loose = lightir.optimize(model, "tucker{tol=0.3}", calib=calib, tolerances={"tucker": "cos:-1"})
    assert loose.report.records[0].cost.macs <= result.report.records[0].cost.macs


def test_cp_budget_search_fits_the_chosen_ranks_fully():
    """The target-macs search compares 20-sweep CP fits; the kept layers get the full fit."""
    from lightir.lowrank.factor import cp_factors
    from lightir.zoo import build

    result = lightir.optimize("zoo:digits", "cp{target-macs=0.6}", tolerances={"cp": "cos:-1"})
    layers = result.report.records[0].stats["layers"]
    assert layers
    original = {node.name: node for node in build("digits").graph}
    for name, figures in layers.items():
        weight = original[name].inputs[1].const_value.numpy()
        full = cp_factors(weight, figures["rank"], 100)[1]
        search = cp_factors(weight, figures["rank"], 20)[1]
        assert figures["weight_error"] == round(full, 5) != round(search, 5)
    ratio = result.report.records[0].cost.macs / result.report.original.macs
    assert ratio <= 0.6


def test_refit_skips_a_factorized_layer_whose_output_nothing_reads(tmp_path):
    """A dead Conv (its output unread, as the fuzzer's seed-20 graph has) is factorized and
    its chain removed with it; the refit then has nothing to fit there and must not raise
    (it did: KeyError on the removed node, and the pass was rolled back)."""
    from lightir.testing.fuzz import random_model

    model = random_model(20)
    dead = [n for n in model.graph if n.op_type == "Conv" and not list(n.outputs[0].uses())]
    dead = [n for n in dead if n.outputs[0] not in model.graph.outputs]
    assert dead  # the graph has the dead layer this test is about
    images = np.random.default_rng(0).standard_normal((64, 2, 12, 5)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=images)
    result = lightir.optimize(
        model, "spatial-svd{energy=0.7,refit=true}", calib=str(tmp_path / "calib.npz")
    )
    record = result.report.records[-1]
    assert record.status == "changed", record.message
