"""Integer builds checked one quantized tensor at a time, each fed onnxruntime's inputs.

An int8 model's outputs can hinge on rounding ties. Two correct int8 implementations
round a value that sits within a few ulps of a half step differently: onnxruntime's
QLinearConv multiplies the accumulator by one fused scale, its QLinearAdd uses 22-bit
fixed-point multipliers, TVM's epilogue computes ``(acc - shift) * scale + bias`` and LLVM
may contract that into an FMA. A step that differs early is then carried and amplified by
every later layer. Measured with onnxruntime alone, moving each activation scale by one ulp
moved the zoo ResNet's int8 logits by 0.14-1.7% and PP-OCRv6's tiny recognizer's
probabilities by up to 94%, beyond any exact tolerance. Judged only at its outputs, a correct
integer build of such a model fails as often as its ties fall the other way.

The int8 contract is stated per quantized tensor instead: within one quantization step of
onnxruntime's int8 run, element by element. :func:`stepwise_check` checks exactly that on a
*cut* copy of the model (:func:`cut_model`): every activation ``QuantizeLinear`` output is
also a graph output, and every ``DequantizeLinear`` that read it reads a new graph input
instead. Fed the quantized tensors of onnxruntime's own run of the whole model, each piece
between two cuts computes from the same integers in both runtimes, so an error cannot be
carried from one piece into the next: a wrong kernel is off by many steps where it is,
while a tie is one step. Float outputs behind the last cut are held to the exact tolerance.

The cut copy is built with the same integer rewrites and the same tuning database as the
build it vouches for. Its kernels are fused the same way up to each cut; what fuses across a
cut in the real build (a requantize followed by a quantized add, say) is two kernels in the
cut one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from lightir.ir_util import clone_model

CUT_SUFFIX = "::cut"  # the graph input that replaces a quantized tensor in the cut copy
INTEGER_TYPES = (ir.DataType.UINT8, ir.DataType.INT8)


@dataclass
class StepwiseResult:
    """How far each quantized tensor of the build is from onnxruntime's, given its inputs."""

    tensors: int  # quantized tensors compared
    elements: int  # their elements, over all samples
    max_steps: int  # largest difference, in quantization steps
    off_by_one: int  # elements one step apart (ties decided the other way)
    worst_tensor: str
    float_rel: float  # float outputs behind the last cut: relative error
    float_tolerance: float

    @property
    def ok(self) -> bool:
        """Every quantized tensor within one step, the float outputs within tolerance."""
        return self.max_steps <= 1 and self.float_rel <= self.float_tolerance

    def describe(self) -> str:
        """One line for notes and errors."""
        worst = f", worst '{self.worst_tensor}'" if self.max_steps else ""
        bound = "<=" if self.float_rel <= self.float_tolerance else ">"
        return (
            f"{self.tensors} quantized tensors fed onnxruntime's inputs: at most "
            f"{self.max_steps} step(s) from onnxruntime's int8 run ({self.off_by_one} of "
            f"{self.elements} elements one step apart{worst}); float outputs rel "
            f"{self.float_rel:.3g} {bound} {self.float_tolerance:.2g}"
        )

    def as_dict(self) -> dict:
        """The figures, for the library's metadata."""
        return dataclasses.asdict(self)


def cut_points(model: ir.Model) -> list[ir.Value]:
    """The activation ``QuantizeLinear`` outputs (8-bit) that a ``DequantizeLinear`` reads."""
    cuts = []
    for node in model.graph:
        if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        if node.inputs[0] is None or node.inputs[0].const_value is not None:
            continue
        value = node.outputs[0]
        if value.dtype not in INTEGER_TYPES or not value.name:
            continue
        if any(user.op_type == "DequantizeLinear" and index == 0 for user, index in value.uses()):
            cuts.append(value)
    return cuts


def cut_model(model: ir.Model) -> tuple[ir.Model, list[str]]:
    """A copy cut at every :func:`cut_points` value, and the names of the values cut.

    Each cut value stays computed and becomes a graph output; the ``DequantizeLinear`` nodes
    that read it read the graph input ``NAME::cut`` instead. ``model`` is not changed.
    """
    copy = clone_model(model)
    names = []
    outputs = set(copy.graph.outputs)
    for value in cut_points(copy):
        fed = ir.Value(name=value.name + CUT_SUFFIX, type=value.type, shape=value.shape)
        for user, index in list(value.uses()):
            if user.op_type == "DequantizeLinear" and index == 0:
                user.replace_input_with(index, fed)
        copy.graph.inputs.append(fed)
        if value not in outputs:
            copy.graph.outputs.append(value)
            outputs.add(value)
        names.append(value.name)
    return copy, names


def stepwise_check(
    model: ir.Model,
    batches: Sequence[Mapping[str, np.ndarray]],
    build: Callable[[ir.Model, dict[str, tuple[int, ...]]], Callable],
    float_tolerance: float,
) -> StepwiseResult:
    """Check a build of ``model`` quantized tensor by quantized tensor (see the module).

    ``build(cut, shapes)`` builds the cut copy at those input shapes the way the build being
    checked was built, and returns its ``run(feeds) -> {name: array}``.
    """
    from lightir.onnx_bridge import OrtModel
    from lightir.verify import compare_outputs, output_scales

    cut, names = cut_model(model)
    if not names:
        raise ValueError("the model has no quantized activations to cut at")
    probes = {v.name: v for v in cut_points(model)}
    taps = OrtModel(model, optimize="all", probes=probes).run_all(list(batches))
    feeds = []
    for batch, tapped in zip(batches, taps):
        feed = dict(batch)
        feed.update({name + CUT_SUFFIX: tapped[name] for name in names})
        feeds.append(feed)
    shapes = {name: tuple(np.shape(array)) for name, array in feeds[0].items()}
    for value in cut.graph.inputs:
        if value.name in shapes:
            value.shape = ir.Shape(list(shapes[value.name]))
    expected = OrtModel(cut, optimize="all").run_all(feeds)
    run = build(cut, shapes)
    actual = [run(feed) for feed in feeds]

    quantized = set(names)
    worst, worst_name, one, total = 0, "", 0, 0
    for want, got in zip(expected, actual):
        for name in names:
            steps = np.abs(want[name].astype(np.int32) - np.asarray(got[name]).astype(np.int32))
            total += steps.size
            one += int(np.count_nonzero(steps == 1))
            if steps.size and int(steps.max()) > worst:
                worst, worst_name = int(steps.max()), name
    floats = [v.name for v in model.graph.outputs if v.name not in quantized]
    rel = 0.0
    if floats:
        scales = output_scales(model)
        metrics = compare_outputs(
            [{k: e[k] for k in floats} for e in expected],
            [{k: a[k] for k in floats} for a in actual],
            scales,
        )
        rel = max(m.rel_error for m in metrics)
    return StepwiseResult(
        tensors=len(names),
        elements=total,
        max_steps=worst,
        off_by_one=one,
        worst_tensor=worst_name,
        float_rel=rel,
        float_tolerance=float_tolerance,
    )
