"""Hostile and broken inputs (issue 7, part 3): a one-line error with exit 2, or a correct
pass-through; never a crash, a read outside the model's directory, or a partial output.

Truncated and random bytes and external data pointing outside the model's directory
(absolute, ``..``, symlink) are covered in test_cli.py and test_io.py; the rest is here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lightir
from lightir.builder import GraphBuilder
from lightir.errors import InputError

RNG = np.random.default_rng(0)


def lightir_opt(*args):
    return subprocess.run(
        [sys.executable, "-m", "lightir.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def conv_bn_model(extra_nodes=(), opsets=(("", 17),), tail="bn") -> onnx.ModelProto:
    """x -> Conv -> BatchNormalization [-> extra nodes] -> out, as a plain protobuf."""
    inits = [
        numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(RNG.uniform(0.5, 1.5, 4).astype(np.float32), "gamma"),
        numpy_helper.from_array(RNG.normal(size=4).astype(np.float32), "beta"),
        numpy_helper.from_array(RNG.normal(size=4).astype(np.float32), "mean"),
        numpy_helper.from_array(RNG.uniform(0.5, 2, 4).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"]),
        *extra_nodes,
    ]
    nodes[-1].output[0] = "out"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    opset_imports = [helper.make_opsetid(d, v) for d, v in opsets]
    return helper.make_model(graph, opset_imports=opset_imports, ir_version=8)


def _set(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))


def make_case(case: str) -> onnx.ModelProto:
    if case == "newer-opset":
        return conv_bn_model(opsets=(("", onnx.defs.onnx_opset_version() + 3),))
    model = conv_bn_model()
    if case == "shape-mismatch":
        model.graph.initializer[0].dims[0] = 5  # 4*3*3*3 values declared as 5*3*3*3
    elif case == "cycle":
        model.graph.node[0].input[0] = "out"  # the conv reads the BN's output
    elif case == "nan-weight":
        weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
        weight[0, 0, 0, 0] = np.nan
        _set(model, "w", weight)
    elif case == "nan-bn":
        _set(model, "var", np.array([1.0, np.nan, 1.0, 1.0]))
    elif case == "inf-weight":
        weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
        weight[1, 2, 0, 1] = np.inf
        _set(model, "w", weight)
    return model


HOSTILE = {
    "newer-opset": "newer than the installed onnx",
    "shape-mismatch": "declared shape does not match its data",
    "cycle": "a cycle",
    "nan-weight": "NaN",
    "nan-bn": "NaN",
    "inf-weight": "Inf value(s) in layer weights",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_model_one_line_exit_2_no_output(tmp_path, case):
    path = tmp_path / f"{case}.onnx"
    onnx.save(make_case(case), str(path))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "out.onnx"
    proc = lightir_opt(path, "-p", "reparam", "-o", out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightir-opt: error:"), proc.stderr
    assert HOSTILE[case] in lines[0] and str(path) in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_hostile_model_through_the_api_raises_input_error():
    import onnx_ir as ir

    model = ir.serde.deserialize_model(make_case("nan-bn"))
    with pytest.raises(InputError, match="NaN"):
        lightir.optimize(model, "fold-bn")


def test_inf_outside_layer_weights_is_legitimate():
    # Clip(min=-inf) is how exporters write a one-sided clip: not an error.
    clip = helper.make_node("Clip", ["bn", "lo", "hi"], ["out"])
    model = conv_bn_model(extra_nodes=[clip])
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(-np.inf, np.float32), "lo"),
            numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        ]
    )
    import onnx_ir as ir

    result = lightir.optimize(ir.serde.deserialize_model(model), "fold-bn")
    assert result.report.ok and [n.op_type for n in result.model.graph] == ["Conv", "Clip"]


def test_unknown_custom_domain_op_passes_through_untouched(tmp_path):
    custom = helper.make_node("AcmeFoo", ["bn"], ["foo"], domain="com.acme", alpha=2.0)
    relu = helper.make_node("Relu", ["foo"], ["out"])
    model = conv_bn_model(extra_nodes=[custom, relu], opsets=(("", 17), ("com.acme", 1)))
    path, out = tmp_path / "custom.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(path))
    # onnxruntime cannot run it, so numeric checks are impossible: say so, suggest the way out.
    proc = lightir_opt(path, "-p", "fold-bn", "-o", out)
    assert proc.returncode == 2 and "--verify structural" in proc.stderr and not out.exists()
    proc = lightir_opt(path, "-p", "fold-bn,cleanup", "--verify", "structural", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    result = onnx.load(str(out))
    assert [n.op_type for n in result.graph.node] == ["Conv", "AcmeFoo", "Relu"]
    foo = result.graph.node[1]
    assert foo.domain == "com.acme" and helper.get_attribute_value(foo.attribute[0]) == 2.0
    assert {(o.domain, o.version) for o in result.opset_import} >= {("com.acme", 1)}


@pytest.mark.slow
def test_model_over_2gb_with_external_data(tmp_path):
    """A 2.1 GB model, generated here: loaded memory-mapped, folded, written as external data."""
    import onnx_ir as ir

    from lightir import io as lightir_io

    features = 8192
    layers = 8  # 8 x 8192 x 8192 float32 = 2.15 GB
    b = GraphBuilder("big", seed=0)
    x = b.input("x", ["batch", features])
    rng = np.random.default_rng(0)
    for _ in range(layers):
        weight = rng.standard_normal((features, features), dtype=np.float32)
        weight *= np.float32(1 / np.sqrt(features))
        x = b.op("MatMul", [x, b.initializer(weight, "w")], channels=features)
        del weight
        x = b.batch_norm(x)
    b.output(x, "out")
    model = b.build()
    path = tmp_path / "big.onnx"
    lightir_io.save(model, path, external_data=True)
    del model, b
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) > 2**31
    out = tmp_path / "out" / "big_opt.onnx"
    out.parent.mkdir()
    proc = lightir_opt(path, "-p", "fold-bn,cleanup", "-o", out)
    assert proc.returncode == 0, proc.stderr
    written = os.listdir(out.parent)
    assert len(written) >= 2, written  # the model and its external data, nothing partial
    result = ir.load(str(out))
    ops = [n.op_type for n in result.graph]
    assert ops.count("MatMul") == layers and "BatchNormalization" not in ops  # all BN folded
    size = sum((out.parent / f).stat().st_size for f in written)
    assert size > 2**31
