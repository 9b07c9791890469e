"""Channels-last float convolutions on x86 (lightir.lowering.layout, issue 17 item 2)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import lightir
from lightir.errors import UsageError
from lightir.testing import random_inputs, run

tvm = pytest.importorskip("tvm")

from lightir.lowering import compile_model, load  # noqa: E402
from lightir.lowering.layout import channels_last  # noqa: E402


def depthwise_net() -> ir.Model:
    """Depthwise 3x3 -> ReLU -> 1x1 conv with bias -> residual add -> max pool -> Flatten
    -> Gemm: what a MobileNet block feeds a classifier."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "dw"], ["a"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "pw", "pb"], ["c"]),
        helper.make_node("Conv", ["x", "sc"], ["s"]),
        helper.make_node("Add", ["c", "s"], ["d"]),
        helper.make_node("MaxPool", ["d"], ["e"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["e"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [
            init("dw", 8, 1, 3, 3),
            init("pw", 16, 8, 1, 1),
            init("pb", 16),
            init("sc", 16, 8, 1, 1),
            init("fc", 10, 16 * 5 * 5),
            init("fb", 10),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def test_convs_become_nhwc_with_transposes_only_at_the_borders():
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from lightir.lowering.targets import resolve

    mod = from_onnx(ir.to_proto(depthwise_net()), shape_dict={"x": [1, 8, 10, 10]})
    before = mod.script()
    assert before.count('data_layout="NCHW"') == 3
    after = channels_last(mod)
    text = after.script()
    assert text.count('data_layout="NHWC"') == 3 and 'data_layout="NCHW"' not in text
    assert text.count('kernel_layout="HWIO"') == 3
    target = resolve("x86").tvm_target()
    with target:
        fused = relax.get_pipeline("zero")(after)
    kernels = [g.name_hint for g, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    # NHWC is carried through ReLU, the add and the pool: one transpose in, one before the
    # flatten; the weight transposes are folded constants.
    assert sum("transpose" in name for name in kernels) == 2, kernels


def test_nhwc_and_nchw_builds_both_match_onnxruntime(tmp_path):
    model = depthwise_net()
    nhwc = compile_model(model, tmp_path / "nhwc.so", "x86")
    nchw = compile_model(model, tmp_path / "nchw.so", "x86", layout="nchw")
    assert nhwc.metadata["layout"] == "nhwc" and nchw.metadata["layout"] == "nchw"
    for result in (nhwc, nchw):
        assert result.checked and result.rel_error <= result.tolerance
    feeds = random_inputs(model, samples=1, seed=7)[0]
    expected = run(model, [feeds])[0]["y"]
    for name in ("nhwc", "nchw"):
        got = load(tmp_path / f"{name}.so").run(["y"], feeds)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_layout_is_left_alone_where_it_must_be(tmp_path):
    # ARM builds keep the model's layout (channels-last is measured on x86 only).
    arm = compile_model(depthwise_net(), tmp_path / "arm.so", "arm", check=False)
    assert arm.metadata["layout"] == "nchw"
    # An int8 model's convs take the integer rewrite's NHWC / OHWI, not HWIO.
    q = compile_model(lightir.optimize("zoo:digits", "reparam,int8").model, tmp_path / "q.so")
    assert q.metadata["integer_ops"] > 0 and q.metadata["layout"] == "nhwc"
    with pytest.raises(UsageError, match="layout 'nchwc'"):
        compile_model(depthwise_net(), tmp_path / "bad.so", "x86", layout="nchwc")
    assert not (tmp_path / "bad.so").exists()
