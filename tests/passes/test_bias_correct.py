from __future__ import annotations

import numpy as np

import lightir
from lightir.data import CalibrationData
from lightir.testing import GraphBuilder, declines, run


def pointwise(seed=0):
    b = GraphBuilder("pointwise", seed=seed)
    x = b.input("x", ["batch", 16, 6, 6])
    b.output(b.conv(x, 8, 1, pads=[0] * 4, bias=True), "y")
    return b.build()


def mean_error(reference, candidate, feeds):
    ref, got = run(reference, feeds)[0]["y"], run(candidate, feeds)[0]["y"]
    return np.abs((got - ref).mean(axis=(0, 2, 3))).max()


def test_bias_correction_cancels_the_mean_weight_rounding_error():
    model = pointwise()
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((32, 16, 6, 6)) + rng.uniform(0.5, 3, (1, 16, 1, 1))).astype(
        np.float32
    )
    calib = CalibrationData({"x": data})
    feeds = [{"x": data[2:]}]  # the rows bias-correct fit on (the verifier keeps the first 2)
    plain = lightir.optimize(model, "int8-weights{min-size=1}").model
    corrected = lightir.optimize(model, "bias-correct,int8-weights{min-size=1}", calib=calib).model
    assert mean_error(model, corrected, feeds) < mean_error(model, plain, feeds) / 20


def test_bias_correction_without_data_uses_bn_statistics_or_declines():
    b = GraphBuilder("bn", seed=1)
    x = b.input("x", [1, 4, 6, 6])
    y = b.relu(b.batch_norm(b.conv(x, 16, 3)))
    b.output(b.conv(y, 8, 1, pads=[0] * 4, bias=True), "y")
    result = lightir.optimize(b.build(), "bias-correct")
    assert result.report.ok and result.report.records[0].stats["corrected"] == 1
    declined = lightir.optimize(pointwise(), "bias-correct")
    assert declined.report.records[0].status == "unchanged"
    assert any("no calibration data" in d for d in declines(declined))


def test_bias_correction_handles_depthwise_convs():
    b = GraphBuilder("dw", seed=2)
    x = b.input("x", ["batch", 8, 6, 6])
    b.output(b.conv(x, 8, 3, groups=8, bias=True), "y")
    model = b.build()
    data = np.random.default_rng(1).uniform(0, 4, (16, 8, 6, 6)).astype(np.float32)
    result = lightir.optimize(model, "bias-correct", calib=CalibrationData({"x": data}))
    assert result.report.ok and result.report.records[0].stats["corrected"] == 1


def test_after_fold_bn_the_folded_statistics_still_drive_the_correction():
    """int8 folds BN first (its prerequisite); without data, the folded layer's BN statistics
    are what bias correction has. Same corrected bias as before the fold."""
    b = GraphBuilder("bn", seed=1)
    x = b.input("x", [1, 4, 6, 6])
    y = b.relu(b.batch_norm(b.conv(x, 16, 3)))
    b.output(b.conv(y, 8, 1, pads=[0] * 4, bias=True), "y")
    model = b.build()
    before = lightir.optimize(model, "bias-correct").model
    after = lightir.optimize(model, "fold-bn,bias-correct")
    assert after.report.record("bias-correct").stats["corrected"] == 1

    def last_bias(m):
        conv = [n for n in m.graph if n.op_type == "Conv"][-1]
        return conv.inputs[2].const_value.numpy()

    np.testing.assert_allclose(last_bias(after.model), last_bias(before), rtol=1e-6)
    # A layer fed by a plain conv (no BN folded into it) still declines.
    declined = lightir.optimize(pointwise(), "fold-bn,bias-correct")
    assert any("no calibration data" in d for d in declines(declined))
