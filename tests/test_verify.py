"""The verifier's figures for probability maps (soft IoU)."""

from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir.testing import GraphBuilder
from lightir.verify import compare_outputs, output_scales, soft_iou


def test_soft_iou_is_the_threshold_averaged_iou_of_two_maps():
    p = np.array([0.0, 0.2, 0.9, 1.0])
    assert soft_iou([p], [p]) == 1.0
    q = np.array([0.0, 0.2, 0.5, 1.0])  # one pixel lower: agrees below 0.5, flips 0.5..0.9
    assert soft_iou([p], [q]) == pytest.approx((0.2 + 0.5 + 1.0) / (0.2 + 0.9 + 1.0))
    # The IoU of the maps thresholded at t, averaged over t in [0, 1], weighted by the union.
    thresholds = np.linspace(0, 1, 100001)[1:]
    both = [np.sum((p > t) & (q > t)) for t in thresholds]
    union = [np.sum((p > t) | (q > t)) for t in thresholds]
    assert soft_iou([p], [q]) == pytest.approx(np.sum(both) / np.sum(union), abs=1e-4)
    assert soft_iou([np.array([-0.5, 0.5])], [np.array([0.5, 0.5])]) is None  # not probabilities


def test_soft_iou_of_a_per_position_map_is_its_worst_class():
    background = np.full((1, 1, 4, 4), 0.9)
    face = 1 - background
    ref = np.concatenate([background, face], axis=1)
    got = ref.copy()
    got[0, 1, 0, 0], got[0, 0, 0, 0] = 0.0, 1.0  # one face pixel lost
    per_class = [soft_iou([ref[:, c]], [got[:, c]]) for c in range(2)]
    assert soft_iou([ref], [got], class_axis=1) == min(per_class) == per_class[1] < 0.95


def _model(head: str, classes_last: bool = False):
    b = GraphBuilder("maps", seed=0)
    x = b.input("x", [1, 3, 8, 8])
    y = b.conv(b.relu(b.conv(x, 4, 3)), 2, 1)
    if head == "Softmax" and classes_last:
        y = b.op("Softmax", [b.flatten(y)], {"axis": 1})
    elif head == "Softmax":
        y = b.op("Softmax", [y], {"axis": 1})
    else:
        y = b.op(head, [y])
    b.output(y, "y")
    return b.build()


@pytest.mark.parametrize(
    "head, classes_last, has_iou",
    [
        ("Sigmoid", False, True),
        ("Softmax", False, True),
        ("Softmax", True, False),
        ("Relu", False, False),
    ],
)
def test_soft_iou_is_reported_for_probability_maps_only(head, classes_last, has_iou):
    model = _model(head, classes_last)
    feeds = lightir.testing.random_inputs(model, samples=2, seed=0)
    reference = lightir.testing.run(model, feeds)
    moved = [{k: v * 0.9 for k, v in r.items()} for r in reference]
    (metrics,) = compare_outputs(reference, moved, output_scales(model))
    assert (metrics.soft_iou is not None) == has_iou
    if has_iou:
        assert metrics.soft_iou == pytest.approx(0.9, abs=1e-6)


def test_one_ulp_move_equals_nextafter_with_the_same_draws():
    import warnings

    from lightir.verify import ULP_CHUNK, _one_ulp

    weights = np.random.default_rng(1).standard_normal(ULP_CHUNK + 4).astype(np.float32)
    tiny, top = np.float32(1e-45), np.finfo(np.float32).max
    weights[:6] = [0.0, -0.0, top, -top, tiny, -tiny]
    weights = weights.reshape(-1, 4)  # several chunks, a ragged last one, rank 2
    draws = np.random.default_rng(5).random(weights.shape) < 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # max -> inf overflows, as it must
        expected = np.nextafter(weights, np.where(draws, -np.inf, np.inf).astype(np.float32))
    moved = _one_ulp(weights, np.random.default_rng(5))
    assert moved.shape == weights.shape and moved.dtype == np.float32
    np.testing.assert_array_equal(moved.view(np.int32), expected.view(np.int32))
    assert np.all(moved != weights)


def test_agreement_interval_over_samples():
    from lightir.verify import compare_outputs

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((40, 10))
    close = reference + 0.01 * rng.standard_normal((40, 10))
    broken = close.copy()
    broken[:10] = rng.standard_normal((10, 10))  # a quarter of the samples go wrong
    (good,) = compare_outputs([{"y": reference}], [{"y": close}], intervals=True)
    (bad,) = compare_outputs(
        [{"y": reference[:20]}, {"y": reference[20:]}],
        [{"y": broken[:20]}, {"y": broken[20:]}],
        intervals=True,
    )
    assert good.samples == bad.samples == 40  # samples are axis 0 of every batch
    for m in (good, bad):
        low, high = m.interval
        assert low <= m.agreement <= high
    assert bad.interval[1] - bad.interval[0] > 10 * (good.interval[1] - good.interval[0])
    (one,) = compare_outputs([{"y": reference[:1]}], [{"y": close[:1]}], intervals=True)
    (plain,) = compare_outputs([{"y": reference}], [{"y": close}])
    assert plain.samples == 0 and plain.interval is None  # asked for only by the verifier
    assert one.samples == 1 and one.interval is None  # no interval from one sample


def test_lossy_rows_say_how_many_samples_judged_them():
    from lightir.report import render_table

    result = lightir.optimize("zoo:resnet", "fold-bn,int8")
    record = result.report.record("int8")
    judged = [m for m in record.vs_previous if not m.is_probe]
    assert judged and all(m.samples == 2 and m.interval is not None for m in judged)
    text = render_table(result.report)
    assert "#2 int8: judged on 2 samples" in text and "weak evidence" in text
    assert "#1 fold-bn: judged" not in text  # exact rows are judged on bounds, not agreement


def test_a_quantized_model_has_the_rounding_noise_of_its_quantization_ties():
    """Every float initializer of this int8 model is a Q/DQ scale (weights int8, biases
    int32): moving only weights measured no noise at all, and the exact bound on an integer
    build (onnxruntime's fused run against its unfused one, or a TVM library) was the bare
    fan-in estimate, which rounding-tie flips exceed (PP-OCR's orientation classifier: 5.7e-4
    on real rows). Moving the scales by one ulp measures those flips."""
    import onnx_ir as ir

    from lightir.onnx_bridge import OrtModel
    from lightir.testing import random_inputs
    from lightir.verify import rounding_noise

    b = GraphBuilder("conv_relu", seed=0)
    x = b.input("x", [1, 8, 16, 16])
    b.output(b.conv(b.relu(b.conv(x, 16, 3, bias=True)), 16, 3, bias=True), "y")
    model = lightir.optimize(b.build(), "int8").model
    floats = [v for v in model.graph.initializers.values() if v.dtype == ir.DataType.FLOAT]
    assert floats and all(
        user.op_type in ("QuantizeLinear", "DequantizeLinear")
        for v in floats
        for user, _ in v.uses()
    )
    batches = random_inputs(model, samples=4, seed=1)
    reference = OrtModel(model).run_all(batches)
    assert rounding_noise(model, batches, reference) > 0
