"""svd, spatial-svd, tucker and cp: exact recovery, budgets, declines, refit."""

from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir import zoo
from lightir.data import CalibrationData
from lightir.lowrank import Unstable, cp_factors, svd_factors, tucker2_factors
from lightir.testing import GraphBuilder, assert_outputs_close, declines, op_types

RNG = np.random.default_rng(0)


def test_known_rank_matrix_is_recovered_exactly():
    matrix = RNG.standard_normal((40, 6)) @ RNG.standard_normal((6, 50))
    assert svd_factors(matrix, 6)[2] < 1e-12
    assert svd_factors(matrix, 5)[2] > 1e-2


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


def test_cp_guard_declines_a_kernel_it_cannot_decompose():
    kernel = RNG.standard_normal((16, 16, 3, 3))
    kernel[0, 0, 0, 0] = np.inf
    with pytest.raises(Unstable):
        cp_factors(kernel, 4)


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


def test_tol_policy_needs_data_and_meets_the_layer_tolerance():
    images, _ = zoo.digits_test_split()
    calib = CalibrationData({"input": images[:200]})
    model = lightir.optimize("zoo:digits", "fold-bn").model
    missing = lightir.optimize(model, "tucker{tol=0.1}")
    assert "needs calibration data" in missing.report.failures[0]
    result = lightir.optimize(
        model, "tucker{tol=0.05}", calib=calib, tolerances={"tucker": "cos:-1"}
    )
    assert result.report.ok
    loose = lightir.optimize(model, "tucker{tol=0.3}", calib=calib, tolerances={"tucker": "cos:-1"})
    assert loose.report.records[0].cost.macs <= result.report.records[0].cost.macs
