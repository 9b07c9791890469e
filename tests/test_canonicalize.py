"""Import canonicalization: -1 dims, Constant-node weights, Identity chains, IR version 3."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import lightir
from lightir.data import CalibrationData
from lightir.testing import op_types

CONV_BN = """<ir_version: 7, opset_import: ["" : 12]>
g (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] y) {
  w = Constant <value = float[4, 3, 3, 3] {%s}> ()
  c = Conv <pads = [1, 1, 1, 1]> (x, w)
  s = Constant <value = float[4] {1.5, 0.5, 2.0, 1.0}> ()
  b = Constant <value = float[4] {0.1, -0.2, 0.3, 0.0}> ()
  m = Constant <value = float[4] {0.2, 0.1, -0.1, 0.0}> ()
  v = Constant <value = float[4] {1.0, 2.0, 0.5, 1.5}> ()
  n = BatchNormalization (c, s, b, m, v)
  i1 = Identity (n)
  i2 = Identity (i1)
  y = Relu (i2)
}"""


def conv_bn_model(tmp_path, batch_dim: int | None = 1):
    weights = np.random.default_rng(0).standard_normal(4 * 3 * 3 * 3).round(3)
    proto = onnx.parser.parse_model(CONV_BN % ", ".join(map(str, weights)))
    if batch_dim is not None:
        for value in (proto.graph.input[0], proto.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_value = batch_dim
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    return path


def test_minus_one_dims_constant_weights_and_identities(tmp_path):
    path = conv_bn_model(tmp_path, batch_dim=-1)
    before = path.read_bytes()
    result = lightir.optimize(path, "fold-bn")
    report = result.report
    assert report.ok, report.failures
    done = report.canonicalize.stats
    assert done["symbolic_dims"] == ["input 'x' axis 0", "output 'y' axis 0"]
    assert done["constants_lifted"] == 5 and done["identities_removed"] == 2
    assert report.canonicalize.status == "changed"
    assert report.records[0].status == "changed"  # fold-bn found the Constant-node weights
    assert op_types(result.model) == ["Conv", "Relu"]
    assert path.read_bytes() == before  # the input file is never modified


def test_dynamic_batch_from_minus_one_takes_32_calibration_samples(tmp_path):
    path = conv_bn_model(tmp_path, batch_dim=-1)
    rows = np.random.default_rng(1).standard_normal((32, 3, 6, 6)).astype(np.float32)
    result = lightir.optimize(path, "int8", calib=CalibrationData({"x": rows}))
    assert result.report.ok, result.report.failures
    # half of the 32 rows verify, 8 per run (the batch dim is dynamic); 16 calibrate
    assert result.report.inputs.startswith("2 batch(es), 16 sample(s)")


def test_nothing_to_canonicalize_leaves_no_row():
    result = lightir.optimize("zoo:resnet", "fold-bn")
    assert result.report.canonicalize is None


def test_ir_version_3_model_is_raised_and_int8_writes_a_valid_model(tmp_path):
    from lightir.testing import corpus

    path = corpus.path("onnx-squeezenet")  # IR 3, weights as ConstantOfShape, opset 8
    result = lightir.optimize(path, "int8")
    report = result.report
    assert report.ok, report.failures
    assert report.canonicalize.stats["ir_version"] == "3 -> 4"
    assert [r.name for r in report.records] == ["fold-bn", "upgrade-opset", "int8"]
    assert report.records[-1].status == "changed"
    lightir.save(result.model, tmp_path / "q.onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "q.onnx"), full_check=True)


@pytest.mark.parametrize("dim", [-1, 0])
def test_cli_accepts_non_positive_dims(tmp_path, dim):
    import subprocess
    import sys

    path = conv_bn_model(tmp_path, batch_dim=dim)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightir.cli",
            str(path),
            "-p",
            "reparam",
            "-o",
            str(tmp_path / "out.onnx"),
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.onnx").is_file()


RESIDUAL_SUM = """<ir_version: 7, opset_import: ["" : 12]>
g (float[1, 4, 6, 6] x) => (float[1, 4, 6, 6] y, float[1, 4, 6, 6] z) {
  w = Constant <value = float[4, 4, 1, 1] {%s}> ()
  c = Conv (x, w)
  r = Relu (c)
  y = Sum (r, x)
  z = Sum (r, x, c)
}"""


def test_two_input_sum_becomes_add_and_three_inputs_stay():
    """Old exports write residual additions as Sum: as Add, prune and int8 see them."""
    weights = np.random.default_rng(2).standard_normal(16).round(3)
    proto = onnx.parser.parse_model(RESIDUAL_SUM % ", ".join(map(str, weights)))
    model = ir.serde.deserialize_model(proto)
    result = lightir.optimize(model, "fold-bn")
    assert result.report.ok, result.report.failures
    assert result.report.canonicalize.stats["sums_as_adds"] == 1
    kinds = {v.name: v.producer().op_type for v in result.model.graph.outputs}
    assert kinds == {"y": "Add", "z": "Sum"}
