"""Helpers for lightir's tests and for authors of custom passes.

model = from_text('''<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }''')
out = lightir.optimize(model, "my-pass").model
assert op_types(out) == ["Relu"]
assert_outputs_close(model, out, rtol=1e-6)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from lightir.builder import GraphBuilder
from lightir.data import input_specs, synthesize
from lightir.onnx_bridge import OrtModel

__all__ = [
    "GraphBuilder",
    "assert_outputs_close",
    "declines",
    "from_text",
    "op_types",
    "run",
    "random_inputs",
]


def from_text(text: str) -> ir.Model:
    """Build a model from ONNX textual syntax (``onnx.parser``), with shapes inferred."""
    proto = onnx.parser.parse_model(text)
    proto = onnx.shape_inference.infer_shapes(proto)
    return ir.serde.deserialize_model(proto)


def declines(result) -> list[str]:
    """Every ``--explain`` reason of a :class:`lightir.Result`, over all passes."""
    return [reason for record in result.report.records for reason in record.declines]


def op_types(model: ir.Model) -> list[str]:
    """Op types of the main graph's nodes, in order."""
    return [node.op_type for node in model.graph]


def random_inputs(model: ir.Model, samples: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded inputs for ``model`` (see :func:`lightir.data.synthesize`)."""
    return synthesize(input_specs(model), samples=samples, seed=seed)


def run(model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` under onnxruntime for each batch of ``feeds``."""
    return OrtModel(model).run_all(feeds)


def assert_outputs_close(
    expected_model: ir.Model,
    actual_model: ir.Model,
    *,
    rtol: float = 1e-5,
    samples: int = 2,
    seed: int = 1,
) -> float:
    """Assert both models agree under onnxruntime: ``max|a-b| <= rtol * max|a|`` per output.

    Returns the largest relative error seen.
    """
    feeds = random_inputs(expected_model, samples=samples, seed=seed)
    expected, actual = run(expected_model, feeds), run(actual_model, feeds)
    worst = 0.0
    for ref, got in zip(expected, actual):
        assert list(ref) == list(got), f"outputs differ: {list(ref)} vs {list(got)}"
        for name in ref:
            assert ref[name].shape == got[name].shape, (
                f"{name}: shape {ref[name].shape} != {got[name].shape}"
            )
            scale = float(np.abs(ref[name]).max()) or 1.0
            rel = float(np.abs(ref[name] - got[name]).max()) / scale
            worst = max(worst, rel)
            assert rel <= rtol, f"output {name}: relative error {rel:.3g} > {rtol:g}"
    return worst
