from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir import zoo
from lightir.testing import GraphBuilder, assert_outputs_close, declines, op_types


def conv_bn_relu(channels=8, seed=0, bias=False, groups=1):
    b = GraphBuilder("conv_bn_relu", seed=seed)
    x = b.input("x", ["batch", 4, 10, 10])
    y = b.relu(b.batch_norm(b.conv(x, channels, 3, groups=groups, bias=bias)))
    b.output(y, "y")
    return b.build()


def optimize(model, pipeline="fold-bn"):
    result = lightir.optimize(model, pipeline)
    assert result.report.ok, result.report.failures
    return result


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv_bn_folds_exactly(bias, groups):
    model = conv_bn_relu(bias=bias, groups=groups)
    out = optimize(model).model
    assert op_types(out) == ["Conv", "Relu"]
    assert assert_outputs_close(model, out, rtol=1e-5) < 1e-5
    # the old weight is gone, the folded one and a bias remain
    conv = out.graph[0]
    assert len(conv.inputs) == 3 and all(v.is_initializer() for v in conv.inputs[1:])
    assert len(out.graph.initializers) == 2


def test_input_model_is_not_modified():
    model = conv_bn_relu()
    before = op_types(model)
    weights = {name: v.const_value for name, v in model.graph.initializers.items()}
    optimize(model)
    assert op_types(model) == before
    assert {name: v.const_value for name, v in model.graph.initializers.items()} == weights


def test_gemm_with_alpha_beta_and_transb():
    b = GraphBuilder("gemm_bn", seed=3)
    x = b.input("x", ["batch", 16])
    w = b.initializer(b.rng.standard_normal((8, 16)).astype(np.float32))
    c = b.initializer(b.rng.standard_normal(8).astype(np.float32))
    y = b.op("Gemm", [x, w, c], {"transB": 1, "alpha": 0.7, "beta": 1.9}, channels=8)
    b.output(b.batch_norm(y), "y")
    model = b.build()
    out = optimize(model).model
    assert op_types(out) == ["Gemm"]
    assert_outputs_close(model, out, rtol=1e-5)


def test_conv_transpose_with_groups():
    b = GraphBuilder("deconv_bn", seed=4)
    x = b.input("x", [1, 6, 5, 5])
    w = b.initializer(b.rng.standard_normal((6, 2, 3, 3)).astype(np.float32))
    y = b.op("ConvTranspose", [x, w], {"group": 3, "strides": [2, 2]}, channels=6)
    b.output(b.batch_norm(y), "y")
    model = b.build()
    out = optimize(model).model
    assert op_types(out) == ["ConvTranspose"]
    assert_outputs_close(model, out, rtol=1e-5)


def test_matmul_rank2_gets_an_add():
    b = GraphBuilder("matmul_bn", seed=5)
    x = b.input("x", ["batch", 12])
    w = b.initializer(b.rng.standard_normal((12, 6)).astype(np.float32))
    y = b.op("MatMul", [x, w], channels=6)
    b.output(b.batch_norm(y), "y")
    model = b.build()
    out = optimize(model).model
    assert op_types(out) == ["MatMul", "Add"]
    assert_outputs_close(model, out, rtol=1e-5)


def test_zoo_models_lose_every_bn_after_convs():
    for name in ["resnet", "mobilenetv2", "vgg"]:
        model = zoo.build(name)
        out = optimize(model, "fold-bn,cleanup").model
        assert "BatchNormalization" not in op_types(out), name
        assert_outputs_close(model, out, rtol=1e-5)


# ---------------------------------------------------------------- must not fire
def test_declines_shared_weight():
    b = GraphBuilder("shared", seed=6)
    x = b.input("x", [1, 4, 6, 6])
    w = b.initializer(b.conv_weight(4, 4, (3, 3)))
    y1 = b.batch_norm(b.conv(x, 4, 3, weight=w))
    y2 = b.batch_norm(b.conv(x, 4, 3, weight=w))
    b.output(b.add(y1, y2), "y")
    model = b.build()
    result = optimize(model)
    assert op_types(result.model).count("BatchNormalization") == 2
    assert any("shared with node" in d for d in declines(result))


def test_declines_conv_output_with_another_consumer():
    b = GraphBuilder("two_consumers", seed=7)
    x = b.input("x", [1, 4, 6, 6])
    conv = b.conv(x, 4, 3)
    b.output(b.add(b.batch_norm(conv), b.relu(conv)), "y")
    model = b.build()
    result = optimize(model)
    assert op_types(result.model).count("BatchNormalization") == 1
    assert any("another consumer" in d for d in declines(result))


def test_declines_bn_in_training_mode():
    b = GraphBuilder("training", seed=8, opset=15)
    x = b.input("x", [1, 4, 6, 6])
    conv = b.conv(x, 4, 3)
    stats = [b.initializer(np.full(4, v, np.float32)) for v in (1.0, 0.0, 0.1, 2.0)]
    y = b.op("BatchNormalization", [conv, *stats], {"training_mode": 1}, num_outputs=3)
    b.output(y, "y")
    model = b.build()
    result = lightir.optimize(model, "fold-bn", verify="structural")
    assert op_types(result.model).count("BatchNormalization") == 1
    assert any("training mode" in d for d in declines(result))


def test_declines_matmul_rank3_output():
    b = GraphBuilder("matmul3", seed=9)
    x = b.input("x", [2, 5, 12])
    w = b.initializer(b.rng.standard_normal((12, 5)).astype(np.float32))
    y = b.op("MatMul", [x, w], channels=5)
    b.output(b.batch_norm(y), "y")
    model = b.build()
    result = optimize(model)
    # BN over axis 1 (length 5) of a [2, 5, 5] tensor is not per MatMul feature: keep it.
    assert op_types(result.model) == ["MatMul", "BatchNormalization"]
    assert any("rank 2" in d for d in declines(result))


def test_declines_non_constant_weight():
    b = GraphBuilder("dynamic_weight", seed=10)
    x = b.input("x", [1, 4, 6, 6])
    w = b.input("w", [4, 4, 3, 3])
    y = b.op("Conv", [x, w], {"pads": [1, 1, 1, 1]}, channels=4)
    b.output(b.batch_norm(y), "y")
    result = optimize(b.build())
    assert "BatchNormalization" in op_types(result.model)
    assert any("not a constant" in d for d in declines(result))


def test_the_folded_layer_keeps_its_name():
    """Reports, Netron and --report-html's layer table follow layers by name."""
    model = zoo.resnet()
    convs = [n.name for n in model.graph if n.op_type == "Conv"]
    result = optimize(model)
    assert [n.name for n in result.model.graph if n.op_type == "Conv"] == convs
    names = [n.name for n in result.model.graph]
    assert len(names) == len(set(names))
