"""Latency measured, not assumed: per-layer tables and whole-model timings with onnxruntime.

As NetAdapt builds them (Yang et al. 2018): a layer's latency at a given shape is measured
on the machine the code runs on by timing a model of that one layer, with onnxruntime's full
graph optimizations, so what a pruned, factorized or int8 layer costs comes from the kernels
that will run it (onnxruntime pads channel counts to its NCHWc block, runs int8 convolutions
in NHWC, ...), not from a MAC count. A layer is a :class:`ConvSpec`: a Conv, or a Gemm /
MatMul as a 1x1 convolution over its rows, float32 or int8 (Q/DQ around it, as ``int8``
writes it, which onnxruntime fuses into an integer kernel).

Timings are medians of repeated runs after a warm-up, with ``threads`` intra-op threads and
spinning off (steadier on a shared machine). Objectives other than ``latency`` are
analytic: ``macs`` and ``bytes`` (weights, at one byte per int8 weight).
"""

from __future__ import annotations

import functools
import math
import random
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir

from lightir.ir_util import constant
from lightir.onnx_bridge import ort, weightless_proto
from lightir.quant.qdq import insert_qdq, quantize_weight

OBJECTIVES = ("latency", "macs", "bytes")


@dataclass(frozen=True)
class ConvSpec:
    """One layer's shape as a convolution on one sample; ``int8`` runs it on integers."""

    cin: int
    cout: int
    kernel: tuple[int, int]
    height: int
    width: int
    group: int = 1
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    int8: bool = False

    @classmethod
    def of_node(cls, node: ir.Node, shapes: Mapping[str, tuple]) -> ConvSpec | None:
        """The spec of a Conv / Gemm / MatMul with a constant weight, or None.

        ``shapes`` are inferred shapes by value name (one sample).
        """
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            return None  # a Constant has no inputs at all (PP-OCRv6's recognizer)
        weight = constant(node.inputs[1])
        x = shapes.get(node.inputs[0].name) if node.inputs[0] is not None else None
        if weight is None or x is None or not all(isinstance(d, int) for d in x):
            return None
        if node.op_type == "Conv" and weight.ndim == 4 and len(x) == 4:
            attrs = node.attributes
            kh, kw = weight.shape[2:]
            pads = tuple(attrs.get_ints("pads", [0, 0, 0, 0]))
            if attrs.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                return None
            return cls(
                cin=x[1],
                cout=weight.shape[0],
                kernel=(kh, kw),
                height=x[2],
                width=x[3],
                group=attrs.get_int("group", 1),
                strides=tuple(attrs.get_ints("strides", [1, 1])),
                pads=pads if len(pads) == 4 else (0, 0, 0, 0),
                dilations=tuple(attrs.get_ints("dilations", [1, 1])),
            )
        if node.op_type == "Gemm" and weight.ndim == 2 and len(x) == 2:
            if node.attributes.get_int("transA", 0):
                return None
            trans_b = node.attributes.get_int("transB", 0)
            cout = weight.shape[0] if trans_b else weight.shape[1]
            return cls(cin=x[1], cout=cout, kernel=(1, 1), height=1, width=1)
        if node.op_type == "MatMul" and weight.ndim == 2 and len(x) >= 2:
            rows = math.prod(x[1:-1]) if len(x) > 2 else 1
            return cls(cin=x[-1], cout=weight.shape[1], kernel=(1, 1), height=rows, width=1)
        return None

    def with_(self, **changes) -> ConvSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @property
    def out_size(self) -> tuple[int, int]:
        """Output height and width."""
        sizes = []
        for axis in (0, 1):
            size = (self.height, self.width)[axis]
            padded = size + self.pads[axis] + self.pads[axis + 2]
            span = self.dilations[axis] * (self.kernel[axis] - 1) + 1
            sizes.append(max(1, (padded - span) // self.strides[axis] + 1))
        return sizes[0], sizes[1]

    @property
    def macs(self) -> int:
        """Multiply-accumulates on one sample."""
        height, width = self.out_size
        per_output = (self.cin // self.group) * self.kernel[0] * self.kernel[1]
        return self.cout * height * width * per_output

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights."""
        count = self.cout * (self.cin // self.group) * self.kernel[0] * self.kernel[1]
        return count * (1 if self.int8 else 4)


def spec_model(spec: ConvSpec, seed: int = 0) -> ir.Model:
    """A model of the one layer ``spec`` describes, with random weights."""
    rng = np.random.default_rng(seed)
    x = ir.val("x", ir.DataType.FLOAT, [1, spec.cin, spec.height, spec.width])
    shape = (spec.cout, spec.cin // spec.group, *spec.kernel)
    weight = (rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))).astype(np.float32)
    w = ir.Value(name="w", const_value=ir.tensor(weight, name="w"))
    b = ir.Value(name="b", const_value=ir.tensor(np.zeros(spec.cout, np.float32), name="b"))
    conv = ir.node(
        "Conv",
        [x, w, b],
        attributes={
            "group": spec.group,
            "strides": list(spec.strides),
            "pads": list(spec.pads),
            "dilations": list(spec.dilations),
            "kernel_shape": list(spec.kernel),
        },
        name="layer",
    )
    y = conv.outputs[0]
    y.name, y.dtype = "y", ir.DataType.FLOAT
    y.shape = ir.Shape([1, spec.cout, *spec.out_size])
    graph = ir.Graph([x], [y], nodes=[conv], initializers=[w, b], opset_imports={"": 17})
    if spec.int8:
        quantize_weight(conv, 0.02)
        insert_qdq(x, 0.02, 128)
        insert_qdq(y, 0.02, 128)  # graph outputs stay float: the dequantized y is the output
        quant = next(iter(y.uses())).node
        graph.outputs[0] = next(iter(quant.outputs[0].uses())).node.outputs[0]
    return ir.Model(graph, ir_version=9)


def session(model: ir.Model, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session with every graph optimization, as deployment runs it.

    The large weights are handed to onnxruntime as external initializers over the model's
    own arrays, which it uses in place, rather than serialized into the protobuf, which it
    copies: a session of ResNet-50 (102 MB of weights) holds 108 MB instead of 216 MB (its
    optimized, re-laid-out weights), at the same latency, and the search keeps two or three
    sessions open at once (the original, the best so far, the candidate). The session keeps
    the arrays alive (``lightir_weights``); the model's tensors must not change under it.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    proto, held = weightless_proto(model)
    # onnxruntime drops initializers no node reads before it takes the external ones, and
    # then refuses those (a quantized layer's float weight left behind).
    used = {
        value.name
        for value in model.graph.initializers.values()
        if value.uses() or value in model.graph.outputs
    }
    arrays = {
        name: np.ascontiguousarray(tensor.numpy()) for name, tensor in held.items() if name in used
    }
    if arrays:
        options.add_external_initializers(
            list(arrays), [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
        )
    sess = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    sess.lightir_weights = arrays
    return sess


def timed(run, *, min_runs: int = 5, min_seconds: float = 0.02, max_runs: int = 200) -> float:
    """Median seconds of ``run()`` after a warm-up of ``min_seconds / 4`` (one call at least).

    A session's first runs are slower (allocations, caches, the thread pool waking up);
    one call did not cover them on a model of a millisecond.
    """
    started = time.perf_counter()
    run()
    while time.perf_counter() - started < min_seconds / 4:
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_runs and (
        len(times) < min_runs or time.perf_counter() - started < min_seconds
    ):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(
    models: Mapping[str, ir.Model],
    feeds: Mapping[str, np.ndarray],
    threads: int = 1,
    rounds: int = 7,
) -> dict[str, float]:
    """Median seconds per run of each model, over ``rounds`` shuffled rounds (side by side)."""
    sessions = {key: session(model, threads) for key, model in models.items()}
    runners = {key: (lambda s=s: s.run(None, dict(feeds))) for key, s in sessions.items()}
    samples: dict[str, list[float]] = {key: [] for key in runners}
    order, rng = list(runners), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            samples[key].append(timed(runners[key], min_runs=3, min_seconds=0.01))
    return {key: statistics.median(values) for key, values in samples.items()}


def paired_times(
    first, second, rounds: int = 7, min_seconds: float = 0.01
) -> list[tuple[float, float]]:
    """``rounds`` pairs of median seconds of ``first()`` and ``second()``, timed back to back.

    The order alternates from round to round, so neither always runs right after the other.
    """
    pairs = []
    for index in range(rounds):
        order = (first, second) if index % 2 == 0 else (second, first)
        times = [timed(run, min_runs=3, min_seconds=min_seconds) for run in order]
        pairs.append((times[0], times[1]) if index % 2 == 0 else (times[1], times[0]))
    return pairs


def paired_ratio(first, second, rounds: int = 7, min_seconds: float = 0.02) -> float:
    """Median over rounds of ``second()``'s time over ``first()``'s, timed back to back.

    A slow spell of the machine (on the 2-core machine of tools/README.md, PP-OCRv5's line
    classifier timed 0.85 ms and, a few seconds later, 1.2-1.8 ms) slows both of a round's
    timings and leaves their ratio.
    """
    return statistics.median(b / a for a, b in paired_times(first, second, rounds, min_seconds))


def paired_difference(
    first, second, rounds: int = 7, min_seconds: float = 0.01
) -> tuple[float, float]:
    """What ``second()`` costs over ``first()``: the median and a 95% half-width, in seconds.

    What one change costs a whole model, from the model with and without it. Two separate
    timings a while apart differ by more than one layer does (PP-OCRv5's line classifier:
    the unchanged model timed once at 1.2 ms instead of 0.85 ms made every layer's int8
    look 0.07 ms cheaper, 3.4 ms in all), so each round times both back to back, in
    alternating order, and the figure is the median of the per-round differences. On a
    shared machine even those spread by more than a layer's effect (+-0.1 ms on that 0.85 ms
    model), so the half-width (1.96 robust standard errors, from the median absolute
    deviation) says how far to trust it.
    """
    differences = [b - a for a, b in paired_times(first, second, rounds, min_seconds)]
    middle = statistics.median(differences)
    spread = statistics.median(abs(d - middle) for d in differences) * 1.4826
    return middle, 1.96 * spread / math.sqrt(rounds)


BLOCK_PROBE = (32, 40, 48)  # output channels of the probe conv: 40 is mid-block at 16


def block_from_times(t32: float, t40: float, t48: float) -> int:
    """16 when 40 channels cost at least 3/4 of the way from 32 to 48 (padded up), else 8."""
    if t48 <= t32 * 1.05:  # channel counts hardly matter here: no block to align to
        return 8
    return 16 if (t40 - t32) >= 0.75 * (t48 - t32) else 8


@functools.cache
def conv_channel_block(threads: int = 1) -> int:
    """The channel block onnxruntime's float convolutions pad to on this machine: 16 or 8.

    Measured, not read from CPU flags: a 3x3 convolution (64 input channels, 14x14) timed
    side by side at 32, 40 and 48 output channels (:func:`block_from_times`). Where MLAS
    runs convolutions in its NCHWc layout with 16-channel blocks (AVX-512), 40 channels cost
    what 48 do; with 8-channel blocks (AVX2) or none, about midway. On the AVX-512 VNNI
    machine of ``tools/README.md``: 69, 97 and 97 us, so 16. Measured once per process.
    """
    spec = ConvSpec(64, BLOCK_PROBE[0], (3, 3), 14, 14, pads=(1, 1, 1, 1))
    models = {c: spec_model(spec.with_(cout=c)) for c in BLOCK_PROBE}
    x = np.random.default_rng(0).standard_normal((1, 64, 14, 14)).astype(np.float32)
    times = interleaved(models, {"x": x}, threads=threads)
    return block_from_times(*(times[c] for c in BLOCK_PROBE))


class LatencyTable:
    """Cost of layers by ``objective``, measured once per distinct shape and cached."""

    def __init__(self, objective: str = "latency", threads: int = 1) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
        self.objective, self.threads = objective, threads
        self.entries: dict[ConvSpec, float] = {}
        self.seconds = 0.0  # spent measuring

    def cost(self, spec: ConvSpec) -> float:
        """Seconds (``latency``), MACs or weight bytes of one layer on one sample."""
        if self.objective == "macs":
            return float(spec.macs)
        if self.objective == "bytes":
            return float(spec.weight_bytes)
        if spec not in self.entries:
            start = time.perf_counter()
            sess = session(spec_model(spec), self.threads)
            rng = np.random.default_rng(1)
            x = rng.standard_normal((1, spec.cin, spec.height, spec.width)).astype(np.float32)
            self.entries[spec] = timed(lambda: sess.run(None, {"x": x}))
            self.seconds += time.perf_counter() - start
        return self.entries[spec]

    def chain(self, specs: list[ConvSpec]) -> float:
        """Cost of layers run one after another."""
        return sum(self.cost(spec) for spec in specs)

    def as_rows(self) -> list[dict]:
        """The measured table, one row per shape (for the report)."""
        return [
            {
                "cin": s.cin,
                "cout": s.cout,
                "kernel": f"{s.kernel[0]}x{s.kernel[1]}",
                "group": s.group,
                "stride": s.strides[0],
                "input": f"{s.height}x{s.width}",
                "int8": s.int8,
                "ms": round(1e3 * seconds, 4),
            }
            for s, seconds in self.entries.items()
        ]
