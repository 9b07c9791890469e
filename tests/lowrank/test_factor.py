"""The factorizations themselves: exact recovery and the CP divergence guard."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
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


def test_layer_output_errors_streamed_equal_the_whole_capture(monkeypatch):
    """``svd``'s per-layer report error keeps sums of squares over parts of the rows, never
    every factorized layer's output for every sample (2.6 GB on ResNet-50, 24 samples)."""
    import onnx_ir.passes.common as common_passes

    from lightir import zoo
    from lightir.ir_util import clone_model
    from lightir.lowrank import driver
    from lightir.onnx_bridge import capture

    original = zoo.build("resnet")
    common_passes.ShapeInferencePass()(original)
    model = clone_model(original)
    convs = [n for n in model.graph if n.op_type == "Conv"][:3]
    for node in convs:  # a perturbed copy stands in for a factorized layer
        weight = node.inputs[1].const_value.numpy()
        node.inputs[1].const_value = ir.tensor(weight * 0.9 + 0.01, name=node.inputs[1].name)
    pairs = list(zip(convs, [n for n in original.graph if n.op_type == "Conv"][:3]))
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_normal((4, 3, 32, 32)).astype(np.float32)} for _ in range(2)]
    monkeypatch.setattr(driver, "OUTPUT_BYTES", 1)  # one row per run
    errors = driver._output_errors(original, model, pairs, batches)
    after = capture(model, [n.outputs[0].name for n, _ in pairs], batches)
    before = capture(original, [t.outputs[0].name for _, t in pairs], batches)
    for node, twin in pairs:
        a, b = after[node.outputs[0].name], before[twin.outputs[0].name]
        expected = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert expected > 1e-3
        assert errors[node] == pytest.approx(expected, rel=1e-5)
