"""Checks that a model still computes what it computed before a pass.

Structural: IR invariants (every input defined before use, producers and uses consistent,
unique value names, outputs produced), ``onnx.checker`` with strict shape inference.

Numeric: onnxruntime runs the model on the same inputs as the reference, and each output is
compared: max abs error, error relative to the output's scale (``max|a-b| / max|ref|``),
cosine similarity, and top-1 agreement for logits-like outputs (rank 2, >= 2 classes).

Exact tolerance
    An exact pass only reorders float32 arithmetic (a BN scale moved into a weight, two
    convolutions summed before instead of after). Rounding of a length-K dot product in
    float32 behaves like a random walk: its relative error is about ``u * sqrt(K)`` with
    ``u = 2**-24``. Independent roundings in successive layers add in quadrature, so over a
    model whose linear layers have fan-ins ``K_l`` the relative output error is about
    ``u * sqrt(sum_l K_l)``. The tolerance is that estimate times a safety factor of 8 (for the
    amplification by the layers after a rounding and non-Gaussian tails), and never below
    ``1e-6``. Measured with fold-bn: zoo ResNet tolerance 4.1e-5, error 5.3e-7; ResNet-50-sized
    tolerance 1.1e-4, error 4.7e-7; a weight changed by 0.5 moves outputs by 1e-3 or more.

    The fan-in estimate assumes rounding is not amplified. A model that subtracts nearly
    equal values (a BN channel with a tiny running variance after a conv whose output sits
    near the running mean, then an average) amplifies it, and there the float32 *original*
    is itself that far from the exact result. The fuzzer found such models: fold-bn's result
    was closer to the float64 truth than the float32 original (2.5e-6 vs 3.2e-6), yet the two
    differed by 1.05e-5 against a fan-in tolerance of 8.1e-6. So the tolerance also measures
    the model's own rounding sensitivity (:func:`rounding_noise`): every float weight moved by
    one ulp in a random direction (twice, seeded), the largest relative output change kept.
    In a quantized model the Q/DQ scales move too: a value within a float rounding of a
    half step is rounded to either code by two correct int8 implementations (onnxruntime's
    fused and unfused runs of one model differ so), and that flip, carried through the
    layers after it, is the model's rounding noise. The exact tolerance is the larger of
    the fan-in estimate and 8 times that noise, and never more than ``EXACT_CAP`` (1e-3):
    a bound at percent level would let a wrong exact pass
    through (PP-OCRv5's detector once measured a noise of 0.028, so a tolerance of 0.23, and a
    pass that moved its output by 2e-2 was kept). On the zoo models the noise is 2.6e-7 to
    8.3e-7 and the fan-in estimate (1.4e-5 to 4.1e-5) decides.

Scale of an output
    Errors are relative to an output's scale: the largest ``|ref|``, but never less than the
    output's natural range when the model ends in a squashing op (Sigmoid, HardSigmoid,
    Softmax, Tanh: 1). On inputs that saturate a Sigmoid head, the map is all ~1e-7 and one
    ulp of change is a 3% "relative error" of nothing; against the range [0, 1] the absolute
    floor is what float32 rounding of such an output can do. A Concat takes the largest
    natural range of its parts.

Parts of a Concat output
    A detector's output often concatenates box coordinates (0-320) and class scores (0-1).
    One cosine or one scale over the whole tensor cannot see the scores collapse, so such an
    output (a Concat, followed through Transpose, Reshape and a Concat of levels) is also
    compared part by part (``out[part 2/2: axis 1 4:84]``), each against its own scale, and
    every bound applies to every part.

Sequence logits
    Raw per-position class scores (a Gemm / MatMul reshaped to ``[T, N, C]``, as CTC
    recognizers export them) are judged position by position too: a lossy cosine bound must
    also hold as the top-1 agreement along the last axis. One cosine over ddddocr's
    ``[T, 1, 8210]`` logits stayed above 0.9 after svd while the model read nothing.

Probes before squashing ops
    A saturated head also hides real errors: a Sigmoid at -15 moves by 1e-7 when its input
    moves by 10%. So the values that feed a graph output's final squashing op are compared
    too (``out <before Sigmoid>``), and exact passes are held to the exact tolerance on them.
    They are reported for lossy passes but judged only for exact ones.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir

from lightir.errors import InputError
from lightir.ir_util import clone_model
from lightir.onnx_bridge import OrtModel, onnx_check, weightless_proto
from lightir.pass_base import Contract, Pass, describe_bounds

logger = logging.getLogger(__name__)

FLOAT32_UNIT_ROUNDOFF = 2.0**-24
EXACT_SAFETY_FACTOR = 8.0
EXACT_FLOOR = 1e-6
EXACT_CAP = 1e-3
SQUASHING_OPS = frozenset({"Sigmoid", "HardSigmoid", "Softmax", "Tanh"})
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
PROBE_MARK = " <before "
PART_MARK = "[part "
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"})
ARITHMETIC_OPS = WEIGHTED_OPS | {"Add", "Sub", "Mul", "Div", "PRelu", "Sum"}
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class StructureError(Exception):
    """The model violates an IR invariant or fails ``onnx.checker``."""


@dataclass
class OutputMetrics:
    """How one output compares with its reference."""

    output: str
    max_abs_error: float
    rel_error: float
    cosine: float
    top1: float | None
    scale: float = 0.0
    probabilities: bool = False  # a Softmax output: top-1 along its axis stands for cosine
    sequence_logits: bool = False  # top-1 along the last axis is judged beside the cosine
    soft_iou: float | None = None  # probability maps only: see :func:`soft_iou`
    samples: int = 0  # samples compared (axis 0 of every batch)
    # 95% bootstrap interval of ``agreement`` over those samples (None: fewer than 2).
    interval: tuple[float, float] | None = None

    @property
    def agreement(self) -> float:
        """The figure a lossy cosine bound is judged on (see :func:`violations`)."""
        if self.probabilities:
            return self.top1
        if self.sequence_logits:
            return min(self.cosine, self.top1)
        return self.cosine

    @property
    def is_probe(self) -> bool:
        """Whether this is a value before a squashing op, not a graph output."""
        return PROBE_MARK in self.output

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass
class Tolerance:
    """The bounds a comparison must meet."""

    rel_error: float | None
    min_cosine: float | None = None
    min_top1: float | None = None
    probes: bool = False  # judge the values before squashing ops too (exact contracts)

    def describe(self) -> str:
        """Short form for messages."""
        return describe_bounds(self.rel_error, self.min_cosine, self.min_top1)


def exact_tolerance(model: ir.Model) -> float:
    """Relative tolerance for exact passes on ``model`` (see module docstring)."""
    total_fan_in = 0
    for graph in model.graphs():
        for node in graph:
            if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.inputs) > 1:
                weight = node.inputs[1]
                shape = weight.shape if weight is not None else None
                if shape is None or not shape.is_static():
                    total_fan_in += 4096
                elif node.op_type == "Conv":
                    total_fan_in += math.prod(shape.numpy()[1:])
                elif node.op_type == "ConvTranspose":
                    total_fan_in += shape.numpy()[0] * math.prod(shape.numpy()[2:])
                elif node.op_type == "Gemm":
                    dims = shape.numpy()
                    total_fan_in += dims[1] if node.attributes.get_int("transB", 0) else dims[0]
                else:
                    dims = shape.numpy()
                    total_fan_in += dims[-2] if len(dims) >= 2 else dims[0]
    estimate = EXACT_SAFETY_FACTOR * FLOAT32_UNIT_ROUNDOFF * math.sqrt(max(total_fan_in, 1))
    return max(EXACT_FLOOR, estimate)


def _producer_through(value: ir.Value, ops: frozenset | set) -> ir.Node | None:
    """The first producer of ``value`` that is not one of ``ops`` (followed on input 0)."""
    node = value.producer()
    for _ in range(16):
        if node is None or node.op_type not in ops or not node.inputs:
            break
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    return node


def _squashing_head(value: ir.Value) -> ir.Node | None:
    """The op that produces ``value`` through layout-only ops, if it is a squashing op."""
    node = _producer_through(value, LAYOUT_OPS)
    return node if node is not None and node.op_type in SQUASHING_OPS else None


def natural_scale(value: ir.Value, depth: int = 0) -> float:
    """1.0 when ``value`` comes from a squashing op (through layout ops or Concat), else 0."""
    if _squashing_head(value) is not None:
        return 1.0
    node = value.producer()
    if node is not None and node.op_type == "Concat" and depth < 8:
        return max((natural_scale(v, depth + 1) for v in node.inputs if v is not None), default=0)
    return 0.0


@dataclass(frozen=True)
class OutputInfo:
    """What the structure says about a graph output.

    ``scale``: natural scale; ``class_axis``: the Softmax axis; ``parts``: ``(axis, sizes,
    scales)`` when the output is a Concat of parts with their own ranges (box coordinates
    and class scores), each judged on its own.
    """

    scale: float = 0.0
    class_axis: int | None = None
    parts: tuple[int, tuple[int, ...], tuple[float, ...]] | None = None
    sequence_classes: int | None = None  # classes of a Gemm / MatMul reshaped to the output


def _softmax_axis(value: ir.Value) -> int | None:
    node = _producer_through(value, {"Identity"})
    if node is None or node.op_type != "Softmax" or value.shape is None:
        return None
    rank = len(value.shape)
    axis = node.attributes.get_int("axis", -1 if _opset(node) >= 13 else 1)
    axis = axis + rank if axis < 0 else axis
    # Before opset 13 Softmax flattens from ``axis`` on; that is one class axis only when
    # it is the last one.
    return axis if axis == rank - 1 or _opset(node) >= 13 else None


def _sequence_classes(value: ir.Value) -> int | None:
    """Classes of raw per-position scores: a Gemm / MatMul output reshaped (CTC logits).

    One cosine over ``[T, N, 8210]`` logits stays above 0.9 while every position's argmax
    moves (ddddocr's recognizer after svd: cosine >= 0.9, nothing read). The output's rank
    is checked on the arrays (rank >= 3, last axis = the classes): exporters declare it
    wrongly (ddddocr says ``[1, seqlen]``).
    """
    node = _producer_through(value, {"Reshape", "Squeeze", "Unsqueeze", "Identity"})
    if node is None or node is value.producer() or node.op_type not in ("Gemm", "MatMul"):
        return None
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None or weight.shape is None or len(weight.shape) != 2:
        return None
    transposed = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    classes = weight.shape[0] if transposed else weight.shape[1]
    return classes if isinstance(classes, int) and classes >= 2 else None


def _opset(node: ir.Node) -> int:
    graph = node.graph
    model_opsets = getattr(graph, "opset_imports", {}) if graph is not None else {}
    return node.version or model_opsets.get("", 13)


def output_scales(model: ir.Model) -> dict[str, OutputInfo]:
    """Natural scale, Softmax class axis and Concat parts of each graph output."""
    return {
        out.name: OutputInfo(
            natural_scale(out), _softmax_axis(out), _concat_parts(out), _sequence_classes(out)
        )
        for out in model.graph.outputs
    }


def _static_dim(value: ir.Value, axis: int) -> int | None:
    if value.shape is None or axis >= len(value.shape):
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) else None


def _concat_parts(value: ir.Value, depth: int = 0):
    """``(axis, sizes, natural scales)`` of the Concat an output is made of, or None.

    Followed through Identity, Transpose (the axis moves), Reshape that keeps every dim up to
    the axis, and a Concat on another axis whose inputs share the same parts (YOLOX's levels).
    """
    node = value.producer()
    if node is None or depth > 8 or value.shape is None:
        return None
    rank = len(value.shape)
    if node.op_type == "Identity":
        return _concat_parts(node.inputs[0], depth + 1)
    if node.op_type == "Transpose":
        inner = _concat_parts(node.inputs[0], depth + 1)
        perm = node.attributes.get_ints("perm", None)
        if inner is None or perm is None:
            return None
        return (list(perm).index(inner[0]), *inner[1:])
    if node.op_type == "Reshape":
        inner = _concat_parts(node.inputs[0], depth + 1)
        source = node.inputs[0]
        if inner is None or source.shape is None:
            return None
        axis = inner[0]
        same = len(source.shape) > axis and all(
            source.shape[a] == value.shape[a] for a in range(axis + 1)
        )
        return inner if same else None
    if node.op_type != "Concat":
        return None
    axis = node.attributes.get_int("axis", 0)
    axis = axis + rank if axis < 0 else axis
    inputs = [v for v in node.inputs if v is not None]
    # Pieces that are themselves made of the same parts (YOLOX's levels, each a Concat of
    # boxes, objectness and classes): the parts inside are what differ in range.
    inner = [_concat_parts(v, depth + 1) for v in inputs]
    if inner and inner[0] is not None and inner[0][0] != axis and all(i == inner[0] for i in inner):
        return inner[0]
    sizes = [_static_dim(v, axis) for v in inputs]
    if len(inputs) >= 2 and None not in sizes:
        return axis, tuple(sizes), tuple(natural_scale(v) for v in inputs)
    return None


def probe_values(model: ir.Model) -> dict[str, ir.Value]:
    """``{"out <before Op>": value}``: the inputs of graph outputs' final squashing ops."""
    probes: dict[str, ir.Value] = {}
    seen = set(model.graph.outputs)
    for out in model.graph.outputs:
        head = _squashing_head(out)
        if head is None or not head.inputs or head.inputs[0] is None:
            continue
        value = head.inputs[0]
        if value in seen or value.is_graph_input() or value.const_value is not None:
            continue
        seen.add(value)
        probes[f"{out.name}{PROBE_MARK}{head.op_type}>"] = value
    return probes


def rounding_noise(
    model: ir.Model,
    batches,
    reference,
    *,
    draws: int = 2,
    seed: int = 0,
    threads: int = 0,
    scales: Mapping[str, OutputInfo] | None = None,
    optimize: bool | str = False,
) -> float:
    """Largest relative output change when every float weight moves by one ulp (see above).

    ``reference`` holds the model's outputs (and probes, when the model is run with them);
    ``scales`` are the outputs' natural scales; ``optimize`` is the onnxruntime level the
    reference was run at (:class:`lightir.onnx_bridge.OrtModel`).
    """
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(draws):
        copy = clone_model(model)
        for value in copy.graph.initializers.values():
            if value.const_value is None or value.dtype != ir.DataType.FLOAT:
                continue
            # Weights and activation quantization scales only: a Resize scale moved by one
            # ulp changes an output shape.
            if not value.uses() or any(
                (user.op_type not in ARITHMETIC_OPS or index == 0 and user.op_type in WEIGHTED_OPS)
                and not (user.op_type in QDQ_OPS and index == 1)
                for user, index in value.uses()
            ):
                continue
            moved = _one_ulp(value.const_value.numpy(), rng)
            value.const_value = ir.tensor(moved, name=value.name)
        try:
            probes = probe_values(copy) if any(PROBE_MARK in k for k in reference[0]) else None
            outputs = OrtModel(copy, threads=threads, probes=probes, optimize=optimize).run_all(
                batches
            )
        except Exception as exc:  # the estimate is an aid: never fail a run over it
            logger.warning("rounding-noise estimate skipped: %s", exc)
            return worst
        del copy
        for metrics in compare_outputs(reference, outputs, scales):
            if math.isfinite(metrics.rel_error):
                worst = max(worst, metrics.rel_error)
    return worst


ULP_CHUNK = 1 << 20  # elements moved at a time: temporaries stay a few MB on any model


def _one_ulp(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``weights`` moved by one ulp each, up or down by a fair coin from ``rng``.

    Equal to ``np.nextafter(w, where(rng.random(shape) < 0.5, -inf, inf))`` bit for bit, and
    the same draws, but done in the integer view (``+1`` moves a float32 away from zero, for
    either sign) and in chunks: on ResNet-50 it took 0.23 s instead of 0.82 s, and no
    temporary is as large as the weights.
    """
    flat = np.ascontiguousarray(weights, np.float32).reshape(-1)
    moved = np.empty_like(flat)
    for start in range(0, flat.size, ULP_CHUNK):
        part = flat[start : start + ULP_CHUNK]
        down = rng.random(part.size) < 0.5
        bits = part.view(np.int32)
        step = np.where(down == (bits < 0), np.int32(1), np.int32(-1))
        out = moved[start : start + ULP_CHUNK]
        np.add(bits, step, out=out.view(np.int32))
        zero = part == 0  # +-0.0: one ulp is the smallest subnormal, with the drawn sign
        if zero.any():
            out[zero] = np.where(down[zero], -1, 1) * np.float32(
                np.finfo(np.float32).smallest_subnormal
            )
    return moved.reshape(weights.shape)


def tolerance_for(
    contract: Contract,
    model: ir.Model,
    override: float | str | None = None,
    noise: float = 0.0,
) -> Tolerance:
    """The tolerance a pass with ``contract`` is held to on ``model``.

    ``override`` replaces the contract's bounds: a number is a relative-error bound alone;
    text such as ``"rel:0.5,cos:0.95,top1:0.9"`` sets each named bound (the others are off).
    ``noise`` is the model's :func:`rounding_noise`; exact tolerances are at least 8 times it,
    and at most ``EXACT_CAP``.
    """
    if override is None:
        if contract.is_exact:
            bound = max(exact_tolerance(model), EXACT_SAFETY_FACTOR * noise)
            return Tolerance(min(EXACT_CAP, bound), probes=True)
        return Tolerance(contract.rel_error, contract.min_cosine, contract.min_top1)
    return parse_tolerance(override)


def parse_tolerance(text: float | str) -> Tolerance:
    """``0.05`` -> rel<=0.05; ``"cos:0.95,top1:0.9"`` -> those bounds."""
    if isinstance(text, (int, float)):
        return Tolerance(float(text))
    try:
        return Tolerance(float(text))
    except ValueError:
        pass
    bounds = {"rel": None, "cos": None, "top1": None}
    for part in text.split(","):
        key, sep, value = part.partition(":")
        if key not in bounds or not sep:
            raise ValueError(f"tolerance {text!r}: use REL or rel:R,cos:C,top1:T")
        bounds[key] = float(value)
    return Tolerance(bounds["rel"], bounds["cos"], bounds["top1"])


def compare_outputs(
    reference: list[Mapping[str, np.ndarray]],
    actual: list[Mapping[str, np.ndarray]],
    scales: Mapping[str, OutputInfo] | None = None,
    intervals: bool = False,
) -> list[OutputMetrics]:
    """Metrics per output over all batches.

    ``scales`` (:func:`output_scales`) gives outputs a natural scale, so the relative error
    is ``max|a-b| / max(max|ref|, scale)``, and Softmax outputs their class axis, along which
    top-1 agreement is counted at every position. Probes missing from ``actual`` are skipped.
    ``intervals``: also the sample count and the bootstrap interval of each whole output's
    agreement (the verifier's reports; searches that compare many trials skip it).
    """
    scales = scales or {}
    metrics = []
    for name in reference[0]:
        if name not in actual[0] and PROBE_MARK in name:
            continue
        info = scales.get(name, OutputInfo())
        ref_arrays = [np.asarray(r[name], np.float64) for r in reference]
        got_arrays = [np.asarray(a[name], np.float64) for a in actual]
        whole = _metrics(name, ref_arrays, got_arrays, info.scale)
        axis = info.class_axis
        sequence = (
            axis is None
            and info.sequence_classes is not None
            and ref_arrays[0].ndim >= 3
            and ref_arrays[0].shape[-1] == info.sequence_classes
        )
        if sequence:
            axis = ref_arrays[0].ndim - 1
        whole.top1 = _top1(reference, actual, name, axis)
        whole.probabilities = info.class_axis is not None and whole.top1 is not None
        if whole.probabilities:
            # A per-position map (classes before the spatial axes) has an IoU per class; a
            # classifier's or a recognizer's scores (classes last) are judged by top-1 alone.
            dense = info.class_axis < ref_arrays[0].ndim - 1
            whole.soft_iou = soft_iou(ref_arrays, got_arrays, info.class_axis) if dense else None
        whole.sequence_logits = sequence and whole.top1 is not None
        if intervals:
            _agreement_interval(
                whole, ref_arrays, got_arrays, axis if whole.top1 is not None else None
            )
        metrics.append(whole)
        if info.parts is None or not math.isfinite(whole.rel_error):
            continue
        axis, sizes, natural = info.parts
        if any(r.ndim <= axis or r.shape[axis] != sum(sizes) for r in ref_arrays):
            continue
        start = 0
        for index, (size, part_scale) in enumerate(zip(sizes, natural)):
            cut = slice(start, start + size)
            part = [np.take(r, range(cut.start, cut.stop), axis=axis) for r in ref_arrays]
            part_got = [np.take(g, range(cut.start, cut.stop), axis=axis) for g in got_arrays]
            where = f"axis {axis} {cut.start}:{cut.stop}"
            label = f"{name}{PART_MARK}{index + 1}/{len(sizes)}: {where}]"
            metrics.append(_metrics(label, part, part_got, part_scale))
            start += size
    return metrics


AGREEMENT_RESAMPLES = 200


def _agreement_interval(
    metrics: OutputMetrics, reference: list, actual: list, class_axis: int | None
) -> None:
    """Set ``metrics.samples`` and the 95% bootstrap interval of its ``agreement``.

    Samples are axis 0 of every batch. The cosine is recomputed from per-sample dot products
    and squared norms over resampled samples; top-1 from per-sample counts of agreeing
    positions; sequence logits take the smaller of the two on each resample.
    """
    if any(r.ndim == 0 or r.shape != a.shape for r, a in zip(reference, actual)):
        return
    ref = np.concatenate([r.reshape(len(r), -1) for r in reference])
    got = np.concatenate([a.reshape(len(a), -1) for a in actual])
    metrics.samples = len(ref)
    if len(ref) < 2 or not (np.isfinite(ref).all() and np.isfinite(got).all()):
        return
    dots, rr, gg = (ref * got).sum(axis=1), (ref * ref).sum(axis=1), (got * got).sum(axis=1)
    agree = total = None
    if class_axis is not None and metrics.top1 is not None:
        same = [
            (np.argmax(r, axis=class_axis) == np.argmax(a, axis=class_axis)).reshape(len(r), -1)
            for r, a in zip(reference, actual)
        ]
        agree = np.concatenate([s.sum(axis=1) for s in same]).astype(np.float64)
        total = np.concatenate([np.full(len(s), s.shape[1]) for s in same]).astype(np.float64)
    rng = np.random.default_rng(0)
    values = []
    for _ in range(AGREEMENT_RESAMPLES):
        rows = rng.integers(0, len(ref), len(ref))
        norms = math.sqrt(float(rr[rows].sum()) * float(gg[rows].sum()))
        cosine = float(dots[rows].sum()) / norms if norms > 0 else 1.0
        top1 = float(agree[rows].sum() / total[rows].sum()) if agree is not None else None
        if metrics.probabilities:
            values.append(top1)
        elif metrics.sequence_logits:
            values.append(min(cosine, top1))
        else:
            values.append(cosine)
    metrics.interval = (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))


def soft_iou(reference: list, actual: list, class_axis: int | None = None) -> float | None:
    """Weighted Jaccard ``sum(min(p, q)) / sum(max(p, q))`` of two probability maps.

    It is the agreement of the thresholded maps averaged over a uniformly drawn threshold,
    counted over the elements that are positive in either: a thresholded map's IoU without
    knowing the threshold. Measured on int8 PP-OCR detectors it follows the mask IoU at the
    DB threshold 0.3 within 0.002 (0.945 / 0.947, 0.935 / 0.935, 0.956 / 0.957), where the
    cosine of the same maps reads 0.990, 0.978, 0.988. For a per-position Softmax map
    (``class_axis`` before the spatial axes: MTCNN's face / background map) it is the worst
    class's. None for values outside [0, 1] (not probabilities).
    """
    ref = [np.asarray(r, np.float64) for r in reference]
    got = [np.asarray(a, np.float64) for a in actual]
    if any(r.shape != g.shape for r, g in zip(ref, got)) or not ref:
        return None
    if min(float(r.min()) for r in ref) < 0 or max(float(r.max()) for r in ref) > 1 + 1e-6:
        return None
    if class_axis is None:
        groups = [(ref, got)]
    else:
        groups = [
            (
                [np.take(r, c, axis=class_axis) for r in ref],
                [np.take(g, c, axis=class_axis) for g in got],
            )
            for c in range(ref[0].shape[class_axis])
        ]
    scores = []
    for refs, gots in groups:
        union = sum(float(np.maximum(r, g).sum()) for r, g in zip(refs, gots))
        if union > 0:
            both = sum(float(np.minimum(r, g).sum()) for r, g in zip(refs, gots))
            scores.append(both / union)
    return min(scores) if scores else None


def _metrics(name: str, reference: list, actual: list, natural: float) -> OutputMetrics:
    ref = np.concatenate([r.ravel() for r in reference])
    got = np.concatenate([a.ravel() for a in actual])
    if ref.shape != got.shape:
        return OutputMetrics(name, math.inf, math.inf, 0.0, None)
    finite = np.isfinite(ref)
    if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(
        ref[~finite], got[~finite]
    ):
        return OutputMetrics(name, math.inf, math.inf, 0.0, None)
    diff = np.abs(ref[finite] - got[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = max(float(np.abs(ref[finite]).max()) if diff.size else 0.0, natural)
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    norms = float(np.linalg.norm(ref[finite]) * np.linalg.norm(got[finite]))
    cosine = float(np.dot(ref[finite], got[finite]) / norms) if norms > 0 else 1.0
    metrics = OutputMetrics(name, max_abs, rel, cosine, None, scale)
    if natural == 1.0 and finite.all():
        metrics.soft_iou = soft_iou([ref], [got])
    return metrics


def _top1(reference, actual, name, class_axis: int | None = None) -> float | None:
    first = np.asarray(reference[0][name])
    axis = class_axis if class_axis is not None and class_axis < first.ndim else None
    if axis is None:
        if first.ndim != 2:
            return None
        axis = 1
    if first.shape[axis] < 2:
        return None
    agree = total = 0
    for r, a in zip(reference, actual):
        same = np.argmax(r[name], axis=axis) == np.argmax(a[name], axis=axis)
        agree += int(same.sum())
        total += same.size
    return agree / total if total else None


def violations(metrics: list[OutputMetrics], tolerance: Tolerance) -> list[str]:
    """One phrase per bound an output breaks (empty when all hold)."""
    problems = []
    for m in metrics:
        if m.is_probe and not tolerance.probes:
            continue
        if tolerance.rel_error is not None and not m.rel_error <= tolerance.rel_error:
            problems.append(
                f"output '{m.output}' rel error {m.rel_error:.3g} > {tolerance.rel_error:.2g} "
                f"(max abs {m.max_abs_error:.3g})"
            )
        if m.probabilities and tolerance.min_cosine is not None and tolerance.rel_error is None:
            # The cosine of peaked probability vectors measures confidence shifts the task
            # does not read (PP-OCRv6 tiny in int8: cosine 0.945, every string the same); the
            # cosine bound is judged as top-1 agreement along the Softmax axis instead.
            if not m.top1 >= tolerance.min_cosine:
                problems.append(
                    f"output '{m.output}' top-1 along the Softmax axis {m.top1:.4f} < "
                    f"{tolerance.min_cosine:g} (the cosine bound on probabilities)"
                )
        elif tolerance.min_cosine is not None and not m.cosine >= tolerance.min_cosine:
            problems.append(f"output '{m.output}' cosine {m.cosine:.6f} < {tolerance.min_cosine:g}")
        if m.sequence_logits and tolerance.min_cosine is not None and tolerance.rel_error is None:
            if not m.top1 >= tolerance.min_cosine:
                problems.append(
                    f"output '{m.output}' top-1 along its last axis {m.top1:.4f} < "
                    f"{tolerance.min_cosine:g} (sequence logits: the cosine bound also holds "
                    "for every position's argmax)"
                )
        if (
            tolerance.min_top1 is not None
            and m.top1 is not None
            and not m.top1 >= tolerance.min_top1
        ):
            problems.append(f"output '{m.output}' top-1 {m.top1:.3f} < {tolerance.min_top1:g}")
    return problems


def check_ir_invariants(model: ir.Model) -> None:
    """Raise :class:`StructureError` when the IR is inconsistent."""
    everywhere: set[ir.Value] = set()
    for graph in model.graphs():
        everywhere.update(graph.inputs)
        everywhere.update(graph.initializers.values())
        for node in graph:
            everywhere.update(node.outputs)
    for graph in model.graphs():
        # Subgraphs may read any value of an enclosing scope.
        outer = everywhere if graph is not model.graph else set()
        defined: set[ir.Value] = set(graph.inputs) | set(graph.initializers.values())
        names: dict[str, ir.Value] = {}
        node_names: set[str] = set()
        for node in graph:
            if node.name:
                if node.name in node_names:
                    raise StructureError(f"two nodes are named '{node.name}' in '{graph.name}'")
                node_names.add(node.name)
        for value in defined:
            _claim_name(names, value, graph)
        for node in graph:
            for index, value in enumerate(node.inputs):
                if value is None:
                    continue
                if value not in defined and value not in outer:
                    raise StructureError(
                        f"node {node.op_type} '{node.name}' input {index} ('{value.name}') is "
                        "used before it is defined or is not in the graph (a cycle, nodes out "
                        "of topological order, or a missing producer)"
                    )
                if (node, index) not in set(value.uses()):
                    raise StructureError(
                        f"value '{value.name}' does not record its use by node '{node.name}'"
                    )
            for out in node.outputs:
                if out.producer() is not node:
                    raise StructureError(f"output '{out.name}' of '{node.name}' lost its producer")
                _claim_name(names, out, graph)
                defined.add(out)
        for out in graph.outputs:
            if out not in defined and out not in outer:
                raise StructureError(f"graph output '{out.name}' is not produced in the graph")


def check_input_model(model: ir.Model) -> None:
    """Refuse what no pass can handle correctly: raise :class:`InputError` naming the culprit.

    * an ``ai.onnx`` opset newer than the installed onnx knows;
    * a tensor whose declared shape does not match its data;
    * NaN anywhere in a float weight, or Inf in the weights of Conv / ConvTranspose / Gemm /
      MatMul / BatchNormalization (Inf elsewhere, such as a Clip bound, is legitimate).
    """
    import onnx

    from lightir.io import iter_tensors

    newest = onnx.defs.onnx_opset_version()
    for domain, version in model.opset_imports.items():
        if domain in ("", "ai.onnx") and version > newest:
            raise InputError(
                f"the model uses opset {version} of ai.onnx, newer than the installed onnx "
                f"{onnx.__version__} knows ({newest}); upgrade onnx and onnxruntime or "
                f"re-export the model with opset <= {newest}"
            )
    weights = set()
    for graph in model.graphs():
        for node in graph:
            if node.op_type in WEIGHTED_OPS:
                weights.update(v for v in node.inputs[1:] if v is not None)
    weight_names = {v.name for v in weights}
    for owner, tensor in iter_tensors(model):
        try:
            array = tensor.numpy()
        except Exception as exc:
            raise InputError(
                f"{owner} declares shape {list(tensor.shape)} but its data does not match "
                f"({str(exc).splitlines()[0][:120]}); re-export the model"
            ) from exc
        if array.dtype.kind != "f" or array.size == 0:
            continue
        if np.isnan(array).any():
            raise InputError(
                f"{owner} holds {int(np.isnan(array).sum())} NaN value(s), so the model computes "
                "NaN; fix the weights (a diverged training run or a bad conversion)"
            )
        name = owner.split("'")[1] if owner.startswith("initializer") else None
        if name in weight_names and np.isinf(array).any():
            raise InputError(
                f"{owner} holds {int(np.isinf(array).sum())} Inf value(s) in layer weights; "
                "fix the weights (a diverged training run or a bad conversion)"
            )


def _claim_name(names: dict[str, ir.Value], value: ir.Value, graph: ir.Graph) -> None:
    if value.name is None:
        return
    other = names.get(value.name)
    if other is not None and other is not value:
        raise StructureError(f"two values are named '{value.name}' in graph '{graph.name}'")
    names[value.name] = value


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for reports."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def check_structure(model: ir.Model) -> None:
    """IR invariants, then ``onnx.checker`` with strict shape inference; raises on a violation."""
    check_ir_invariants(model)
    proto, _ = weightless_proto(model)
    onnx_check(proto)


def check_input(model: ir.Model, name: str) -> None:
    """Refuse an input model no pass can work on, with an :class:`InputError` naming ``name``."""
    try:
        check_input_model(model)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    try:
        check_structure(model)
    except Exception as exc:
        raise InputError(
            f"{name}: the input model is not a valid ONNX model ({first_line(exc)}); "
            "fix or re-export it"
        ) from exc


def pipeline_budget(
    passes: Sequence[Pass], model: ir.Model, tolerances: Mapping[str, float], noise: float = 0.0
) -> Tolerance:
    """What a whole pipeline may move the outputs by.

    The sum of the passes' relative bounds (the triangle inequality) and the smallest of their
    cosine bounds.
    """
    rel, cosines = 0.0, []
    for pass_ in passes:
        tol = tolerance_for(pass_.contract, model, tolerances.get(pass_.name), noise)
        rel += tol.rel_error if tol.rel_error is not None else math.inf
        if tol.min_cosine is not None:
            cosines.append(tol.min_cosine)
    return Tolerance(rel, min(cosines) if cosines else None)


VERIFY_MODES = ("each", "end", "structural")


@dataclass
class Verdict:
    """What the verifier found about one step: accepted when ``failure`` is None.

    ``kind`` says which check failed: ``structure`` (IR invariants or ``onnx.checker``),
    ``runtime`` (onnxruntime cannot run the model), ``outputs`` (the graph outputs changed) or
    ``contract`` (a bound was broken); it is empty when the step was accepted.
    """

    failure: str | None = None
    kind: str = ""
    tolerance: str = ""
    vs_previous: list[OutputMetrics] = field(default_factory=list)
    vs_original: list[OutputMetrics] = field(default_factory=list)
    outputs: list[dict[str, np.ndarray]] | None = None
    seconds: float = 0.0
    note: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the step keeps its model."""
        return self.failure is None


class Verifier:
    """The verification of one run, built once: inputs, reference outputs, scales, noise.

    ``mode`` is ``each`` (structure and numbers after every pass), ``end`` (structure after
    every pass, numbers once at the end) or ``structural`` (no onnxruntime run). Each pass is
    compared with the last accepted model (:meth:`check`, then :meth:`accept`), so a pass
    costs one onnxruntime run; :meth:`finish` compares the result with the original.
    """

    def __init__(
        self,
        batches: list[dict[str, np.ndarray]],
        *,
        mode: str = "each",
        threads: int = 0,
        tolerances: Mapping[str, float] | None = None,
        name: str = "<model>",
    ) -> None:
        self.batches, self.mode, self.threads, self.name = batches, mode, threads, name
        self.tolerances = dict(tolerances or {})
        self.scales: dict[str, OutputInfo] = {}
        self.original: list[dict[str, np.ndarray]] | None = None
        self.current: list[dict[str, np.ndarray]] | None = None
        self.noise = 0.0
        self.seconds = 0.0

    def run(self, model: ir.Model) -> list[dict[str, np.ndarray]]:
        """The model's outputs, and the values before its squashing heads, on the inputs."""
        probes = probe_values(model)
        return OrtModel(model, threads=self.threads, probes=probes).run_all(self.batches)

    def start(
        self, source: ir.Model, model: ir.Model, canonicalized: bool, *, exact: bool, seed: int
    ) -> tuple[ir.Model, Verdict | None]:
        """Take the reference outputs; returns the model to start from and the import verdict.

        ``model`` is ``source`` after import canonicalization; when ``canonicalized``, that
        step is verified like an exact pass against the model as given (the canonical form
        is the reference when onnxruntime cannot run the model as given, and the verdict's
        ``tolerance`` says so). A failed canonicalization keeps ``source``. The rounding noise
        is measured when an ``exact`` pass will run.
        """
        t0 = time.perf_counter()
        self.scales = output_scales(model)
        verdict = None
        if canonicalized:
            model, verdict = self._start_canonical(source, model)
        elif self.mode != "structural":
            self.original = self._reference(model)
        self.current = self.original
        if self.original is not None and exact:
            # The rounding noise is a property of the model: 8 rows measure it as well as 32.
            count = _leading_batches(self.batches, NOISE_ROWS)
            self.noise = rounding_noise(
                model,
                self.batches[:count],
                self.original[:count],
                seed=seed,
                threads=self.threads,
                scales=self.scales,
            )
        self.seconds += time.perf_counter() - t0
        return model, verdict

    def _start_canonical(self, source: ir.Model, model: ir.Model) -> tuple[ir.Model, Verdict]:
        reference, note = None, ""
        if self.mode != "structural":
            try:
                reference = self.run(source)
            except Exception as exc:
                note = (
                    f"onnxruntime cannot run the model as given ({first_line(exc)}); "
                    "its canonical form is the reference"
                )
        self.current = self.original = reference
        verdict = self._judge(model, Contract.exact(), None, numbers=reference is not None)
        if not verdict.accepted:
            if reference is None:
                raise InputError(
                    f"{self.name}: import canonicalization {verdict.failure}; "
                    "rolled back (a lightir bug)"
                )
            verdict.outputs = reference
            return source, verdict
        if reference is None and self.mode != "structural":
            verdict.outputs = self._reference(model)
        self.original, verdict.note = verdict.outputs, note
        return model, verdict

    def _reference(self, model: ir.Model) -> list[dict[str, np.ndarray]]:
        try:
            return self.run(model)
        except Exception as exc:
            raise InputError(
                f"{self.name}: onnxruntime cannot run the input model "
                f"({first_line(exc)}); fix the model or use --verify structural"
            ) from exc

    def check(self, model: ir.Model, pass_: Pass) -> Verdict:
        """Judge ``model`` after ``pass_`` against the last accepted model (not yet accepted)."""
        t0 = time.perf_counter()
        override = self.tolerances.get(pass_.name)
        verdict = self._judge(model, pass_.contract, override, numbers=self.mode == "each")
        verdict.seconds = time.perf_counter() - t0
        self.seconds += verdict.seconds
        return verdict

    def _judge(self, model, contract: Contract, override, *, numbers: bool) -> Verdict:
        tolerance = tolerance_for(contract, model, override, self.noise)
        verdict = Verdict(tolerance=tolerance.describe(), outputs=self.current)
        try:
            check_structure(model)
        except Exception as exc:
            return self._fail(
                verdict, "structure", f"broke the model structure ({first_line(exc)})"
            )
        if not numbers or self.current is None:
            return verdict
        try:
            outputs = self.run(model)
        except Exception as exc:
            reason = f"made a model onnxruntime cannot run ({first_line(exc)})"
            return self._fail(verdict, "runtime", reason)
        before, after = _graph_outputs(self.current[0]), _graph_outputs(outputs[0])
        if before != after:
            return self._fail(
                verdict, "outputs", f"changed the model outputs from {before} to {after}"
            )
        verdict.vs_previous = compare_outputs(self.current, outputs, self.scales, intervals=True)
        if self.original is not None:
            verdict.vs_original = compare_outputs(self.original, outputs, self.scales)
        problems = violations(verdict.vs_previous, tolerance)
        if problems:
            reason = f"broke its {contract.describe()} contract: {'; '.join(problems)}"
            return self._fail(verdict, "contract", reason)
        verdict.outputs = outputs
        return verdict

    @staticmethod
    def _fail(verdict: Verdict, kind: str, failure: str) -> Verdict:
        verdict.kind, verdict.failure = kind, failure
        return verdict

    def accept(self, verdict: Verdict) -> None:
        """Make the checked model the reference of the next pass."""
        if verdict.outputs is not None:
            self.current = verdict.outputs

    def finish(self, model: ir.Model, passes: Sequence[Pass]) -> tuple[list[OutputMetrics], str]:
        """The drift of the final ``model`` from the original, and the failure (``""``: none).

        In ``end`` mode this is the one numeric check, against the pipeline's budget
        (:func:`pipeline_budget`).
        """
        if self.original is None:
            return [], ""
        if self.mode != "end":
            drift = compare_outputs(self.original, self.current, self.scales)
            return drift, ""
        t0 = time.perf_counter()
        drift = compare_outputs(self.original, self.run(model), self.scales)
        self.seconds += time.perf_counter() - t0
        budget = pipeline_budget(passes, model, self.tolerances, self.noise)
        problems = violations(drift, budget)
        return drift, f"final check failed: {'; '.join(problems)}" if problems else ""


NOISE_ROWS = 8


def _leading_batches(batches: list[dict[str, np.ndarray]], rows: int) -> int:
    """How many leading batches hold at least ``rows`` samples (all when they hold fewer)."""
    seen = 0
    for index, batch in enumerate(batches):
        seen += len(next(iter(batch.values())))
        if seen >= rows:
            return index + 1
    return len(batches)


def _graph_outputs(outputs: Mapping[str, np.ndarray]) -> list[str]:
    return [name for name in outputs if PROBE_MARK not in name]
