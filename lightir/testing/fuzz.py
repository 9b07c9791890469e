"""Differential fuzzing: random valid models, a per-pass oracle, and a shrinker.

:func:`random_model` builds a seeded random ONNX model over the ops lightir rewrites and the
ones around them. It mixes plain layers with the motifs the passes look for (Conv -> BN,
RepVGG-style parallel branches, linear Conv / Gemm chains, residual blocks), and adds the
things that make rewrites wrong: shared weights, tensors with several consumers, a consumer
between two branches, broadcasting constants, dynamic batch, odd sizes and asymmetric pads.

:func:`check_pass` runs one pass through :func:`lightir.optimize` and judges it with an
oracle of its own: onnxruntime on the *original* model, on inputs the verifier never saw.

* exact pass: the result must match within the exact tolerance, or the pass must decline
  (leave the model unchanged). A rollback is a bug the verifier caught.
* lossy pass: it must finish with a valid model that meets its declared budget, or be rolled
  back by the verifier for its budget. A crash, an invalid model, or a result that passed
  the verifier but fails the oracle is a bug.
* any pass: the input model must be left unchanged.

:func:`shrink` reduces a failing model to a small one that still fails: it cuts nodes out
(an output is replaced by a same-shaped input of the node, or by a new graph input) and drops
extra graph outputs, while the failure reproduces.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from lightir.builder import GraphBuilder
from lightir.data import CalibrationData, input_specs, synthesize
from lightir.errors import InputError, UsageError
from lightir.ir_util import clone_model
from lightir.onnx_bridge import OrtModel
from lightir.verify import compare_outputs, pipeline_budget, rounding_noise, violations

__all__ = ["Outcome", "check_pass", "model_digest", "random_model", "shrink"]

ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "HardSwish", "LeakyRelu")
CALIBRATION_ROWS = 80  # synthesized samples for passes that need data


@dataclass
class _Tensor:
    value: ir.Value
    c: int
    h: int
    w: int


class _Generator:
    """One random model; every choice comes from ``rng``."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        opset = int(self.rng.choice([13, 17, 17, 21]))
        self.b = GraphBuilder(f"fuzz_{seed}", seed=seed, opset=opset)
        self.opset = opset
        self.pool: list[_Tensor] = []
        self.conv_weights: list[ir.Value] = []
        self.dynamic = bool(self.rng.random() < 0.5)

    # ------------------------------------------------------------------------ helpers
    def pick(self, recent: float = 0.7) -> _Tensor:
        """A tensor of the pool, usually a recent one (old ones make multi-consumer values)."""
        if self.rng.random() < recent or len(self.pool) == 1:
            return self.pool[-1]
        return self.pool[int(self.rng.integers(len(self.pool)))]

    def add(self, value: ir.Value, c: int, h: int, w: int) -> _Tensor:
        tensor = _Tensor(value, c, h, w)
        self.pool.append(tensor)
        return tensor

    def const(self, array: np.ndarray, prefix: str = "c") -> ir.Value:
        return self.b.initializer(np.asarray(array, np.float32), prefix)

    def ints(self, *choices) -> int:
        return int(self.rng.choice(choices))

    # ------------------------------------------------------------------------- layers
    def conv(
        self, x: _Tensor, cout: int | None = None, kernel=None, stride=None, groups=None, pads=None
    ) -> _Tensor:
        rng = self.rng
        if kernel is None:
            kernel = [(1, 1), (3, 3), (3, 3), (5, 5), (1, 3), (3, 1), (2, 2)][rng.integers(7)]
        kh, kw = kernel
        free = pads is None  # callers that fix the pads need the output size they imply
        dilation = 2 if free and rng.random() < 0.15 and kh > 1 and kw > 1 else 1
        eh, ew = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
        if pads is None:
            if rng.random() < 0.6:
                top, left = (eh - 1) // 2, (ew - 1) // 2
                pads = [top, left, eh - 1 - top, ew - 1 - left]
            else:
                pads = [int(rng.integers(0, eh)), int(rng.integers(0, ew))]
                pads += [int(rng.integers(0, eh)), int(rng.integers(0, ew))]
        if x.h + pads[0] + pads[2] < eh or x.w + pads[1] + pads[3] < ew:
            pads = [eh - 1, ew - 1, eh - 1, ew - 1]
        if stride is None:
            stride = 2 if rng.random() < 0.2 and min(x.h, x.w) >= 4 else 1
        if groups is None:
            r = rng.random()
            groups = x.c if r < 0.15 else (2 if r < 0.25 and x.c % 2 == 0 else 1)
        if cout is None:
            cout = x.c if groups == x.c and rng.random() < 0.7 else self.ints(2, 4, 6, 8)
        cout = max(groups, cout // groups * groups)
        shape = (cout, x.c // groups, kh, kw)
        shared = [v for v in self.conv_weights if tuple(v.const_value.shape.numpy()) == shape]
        if shared and rng.random() < 0.3:
            weight = shared[int(rng.integers(len(shared)))]  # shared weights
        else:
            weight = self.const(self.b.conv_weight(cout, x.c // groups, (kh, kw)), "conv_w")
            self.conv_weights.append(weight)
        self.b.channels[x.value] = x.c
        out = self.b.conv(
            x.value,
            cout,
            (kh, kw),
            stride=stride,
            pads=pads,
            groups=groups,
            dilation=dilation,
            bias=bool(rng.random() < 0.5),
            weight=weight,
        )
        h = (x.h + pads[0] + pads[2] - eh) // stride + 1
        w = (x.w + pads[1] + pads[3] - ew) // stride + 1
        return self.add(out, cout, h, w)

    def conv_transpose(self, x: _Tensor) -> _Tensor:
        rng = self.rng
        k = self.ints(1, 2, 3)
        stride = self.ints(1, 2) if max(x.h, x.w) <= 8 else 1
        groups = x.c if rng.random() < 0.2 else 1
        cout = x.c if groups > 1 else self.ints(2, 4)
        # Output size (h - 1) * stride + k - 2 * pad must stay positive on both axes.
        limit = min(k - 1, (k + (min(x.h, x.w) - 1) * stride - 1) // 2)
        pad = int(rng.integers(0, limit + 1)) if limit > 0 else 0
        weight = self.const(rng.normal(0, 1 / np.sqrt(x.c * k * k), (x.c, cout // groups, k, k)))
        inputs = [x.value, weight]
        if rng.random() < 0.5:
            inputs.append(self.const(rng.normal(0, 0.1, cout)))
        attributes = {"kernel_shape": [k, k], "strides": [stride] * 2, "pads": [pad] * 4}
        if groups > 1:
            attributes["group"] = groups
        out = self.b.op("ConvTranspose", inputs, attributes)
        h = (x.h - 1) * stride + k - 2 * pad
        w = (x.w - 1) * stride + k - 2 * pad
        return self.add(out, cout, h, w)

    def batch_norm(self, x: _Tensor) -> _Tensor:
        rng = self.rng
        c = x.c
        variance = rng.uniform(0.3, 2.0, c)
        variance[rng.random(c) < 0.2] = rng.uniform(1e-4, 1e-2)  # near-dead channels
        params = [
            rng.uniform(0.5, 1.5, c),
            rng.normal(0, 0.2, c),
            rng.normal(0, 0.3, c),
            variance,
        ]
        epsilon = float(rng.choice([1e-5, 1e-3, 0.1]))
        out = self.b.op(
            "BatchNormalization", [x.value, *[self.const(p) for p in params]], {"epsilon": epsilon}
        )
        return self.add(out, x.c, x.h, x.w)

    def activation(self, x: _Tensor) -> _Tensor:
        kind = ACTIVATIONS[int(self.rng.integers(len(ACTIVATIONS)))]
        if kind == "Clip":
            inputs = [x.value, self.const(np.array(0.0)), self.const(np.array(6.0))]
            out = self.b.op("Clip", inputs)
        elif kind == "LeakyRelu":
            out = self.b.op("LeakyRelu", [x.value], {"alpha": 0.1})
        elif kind == "HardSwish" and self.opset < 14:
            out = self.b.op("Relu", [x.value])
        else:
            out = self.b.op(kind, [x.value])
        return self.add(out, x.c, x.h, x.w)

    def branches(self, x: _Tensor) -> _Tensor:
        """RepVGG / ACNet / DBB-style parallel linear branches summed, sometimes impure."""
        rng = self.rng
        stride = 2 if rng.random() < 0.2 and min(x.h, x.w) >= 4 else 1
        cout = x.c if rng.random() < 0.6 else self.ints(2, 4, 8)
        groups = 1
        outs = [self.batch_norm(self.conv(x, cout, (3, 3), stride, groups, [1, 1, 1, 1]))]
        kernels = [(1, 1), (1, 3), (3, 1)]
        for kernel in kernels[: int(rng.integers(1, 4))]:
            pads = [kernel[0] // 2, kernel[1] // 2] * 2
            branch = self.conv(x, cout, kernel, stride, groups, pads)
            if rng.random() < 0.7:
                branch = self.batch_norm(branch)
            outs.append(branch)
        if cout == x.c and stride == 1 and rng.random() < 0.5:
            outs.append(self.batch_norm(x) if rng.random() < 0.7 else x)
        if rng.random() < 0.15:
            # A consumer between the branches: the branch output is used elsewhere too.
            self.activation(outs[-1])
        total = outs[0]
        for other in outs[1:]:
            total = self.add(self.b.op("Add", [total.value, other.value]), cout, total.h, total.w)
        return total

    def linear_chain(self, x: _Tensor) -> _Tensor:
        first = self.conv(x, kernel=[(1, 1), (3, 3)][int(self.rng.integers(2))], groups=1)
        if self.rng.random() < 0.3:
            first = self.batch_norm(first)
        return self.conv(first, kernel=[(1, 1), (3, 3)][int(self.rng.integers(2))], groups=1)

    def residual(self, x: _Tensor) -> _Tensor:
        inner = self.conv(x, x.c, (3, 3), 1, 1, [1, 1, 1, 1])
        inner = self.activation(self.batch_norm(inner))
        inner = self.conv(inner, x.c, (3, 3), 1, 1, [1, 1, 1, 1])
        return self.add(self.b.op("Add", [x.value, inner.value]), x.c, x.h, x.w)

    def broadcast(self, x: _Tensor) -> _Tensor:
        rng = self.rng
        shape = [(1, x.c, 1, 1), (x.c, 1, 1), (1,), (), (x.c, x.h, x.w), (1, 1, 1, x.w)][
            rng.integers(6)
        ]
        op = "Mul" if rng.random() < 0.5 else "Add"
        array = rng.uniform(0.5, 1.5, shape) if op == "Mul" else rng.normal(0, 0.3, shape)
        constant = self.const(array, "k")
        inputs = [constant, x.value] if rng.random() < 0.3 else [x.value, constant]
        return self.add(self.b.op(op, inputs), x.c, x.h, x.w)

    def binary(self, x: _Tensor) -> _Tensor:
        same = [t for t in self.pool if (t.c, t.h, t.w) == (x.c, x.h, x.w) and t is not x]
        if not same:
            return self.broadcast(x)
        other = same[int(self.rng.integers(len(same)))]
        op = "Add" if self.rng.random() < 0.7 else "Mul"
        return self.add(self.b.op(op, [x.value, other.value]), x.c, x.h, x.w)

    def concat(self, x: _Tensor) -> _Tensor:
        same = [t for t in self.pool if (t.h, t.w) == (x.h, x.w)]
        count = int(self.rng.integers(1, 3))
        others = [same[int(self.rng.integers(len(same)))] for _ in range(count)]
        parts = [x, *others]
        out = self.b.op("Concat", [t.value for t in parts], {"axis": 1})
        return self.add(out, sum(t.c for t in parts), x.h, x.w)

    def split(self, x: _Tensor) -> _Tensor:
        if x.c < 2:
            return self.activation(x)
        first = int(self.rng.integers(1, x.c))
        sizes = self.b.initializer(np.array([first, x.c - first], np.int64), "split")
        node_out = self.b.op("Split", [x.value, sizes], {"axis": 1}, num_outputs=2)
        outs = list(node_out.producer().outputs)
        self.add(outs[1], x.c - first, x.h, x.w)
        return self.add(outs[0], first, x.h, x.w)

    def slice(self, x: _Tensor) -> _Tensor:
        rng = self.rng
        axis = int(rng.integers(1, 4))
        size = [x.c, x.h, x.w][axis - 1]
        if size < 2:
            return self.activation(x)
        start = int(rng.integers(0, size - 1))
        end = int(rng.integers(start + 1, size + 1))
        arrays = [np.array([v], np.int64) for v in (start, end, axis)]
        inputs = [x.value, *[self.b.initializer(a, "slice") for a in arrays]]
        out = self.b.op("Slice", inputs)
        dims = [x.c, x.h, x.w]
        dims[axis - 1] = end - start
        return self.add(out, *dims)

    def pool_op(self, x: _Tensor) -> _Tensor:
        rng = self.rng
        if rng.random() < 0.2:
            return self.add(self.b.op("GlobalAveragePool", [x.value]), x.c, 1, 1)
        k = self.ints(2, 3)
        if min(x.h, x.w) < k:
            return self.activation(x)
        stride = self.ints(1, 2)
        pad = int(rng.integers(0, 2)) if k == 3 else 0
        op = "MaxPool" if rng.random() < 0.5 else "AveragePool"
        attributes = {"kernel_shape": [k, k], "strides": [stride] * 2, "pads": [pad] * 4}
        if op == "AveragePool" and pad:
            attributes["count_include_pad"] = int(rng.integers(0, 2))
        out = self.b.op(op, [x.value], attributes)
        h = (x.h + 2 * pad - k) // stride + 1
        w = (x.w + 2 * pad - k) // stride + 1
        return self.add(out, x.c, h, w)

    def reshape_like(self, x: _Tensor) -> _Tensor:
        rng = self.rng
        if rng.random() < 0.5:
            out = self.b.op("Transpose", [x.value], {"perm": [0, 1, 3, 2]})
            return self.add(out, x.c, x.w, x.h)
        shape = self.b.initializer(np.array([0, x.c, x.h * x.w, 1], np.int64), "shape")
        return self.add(self.b.op("Reshape", [x.value, shape]), x.c, x.h * x.w, 1)

    def resize(self, x: _Tensor) -> _Tensor:
        if max(x.h, x.w) > 8:
            return self.pool_op(x)
        scales = self.const(np.array([1, 1, 2, 2]), "scales")
        roi = self.const(np.zeros(0), "roi")
        out = self.b.op("Resize", [x.value, roi, scales], {"mode": "nearest"})
        return self.add(out, x.c, 2 * x.h, 2 * x.w)

    def pad(self, x: _Tensor) -> _Tensor:
        rng = self.rng
        pads = [0, 0, int(rng.integers(0, 2)), int(rng.integers(0, 3))]
        pads += [0, 0, int(rng.integers(0, 3)), int(rng.integers(0, 2))]
        inputs = [x.value, self.b.initializer(np.array(pads, np.int64), "pads")]
        if rng.random() < 0.5:
            inputs.append(self.const(np.array(float(rng.choice([0.0, 0.5])))))
        out = self.b.op("Pad", inputs)
        return self.add(out, x.c, x.h + pads[2] + pads[6], x.w + pads[3] + pads[7])

    def matmul4d(self, x: _Tensor) -> _Tensor:
        k = self.ints(2, 4, 6)
        weight = self.const(self.rng.normal(0, 1 / np.sqrt(x.w), (x.w, k)), "mm_w")
        return self.add(self.b.op("MatMul", [x.value, weight]), x.c, x.h, k)

    # --------------------------------------------------------------------------- head
    def head(self, x: _Tensor) -> ir.Value:
        rng = self.rng
        if rng.random() < 0.35:
            return x.value
        pooled = self.b.op("GlobalAveragePool", [x.value])
        flat = self.b.op("Flatten", [pooled], {"axis": 1})
        features = x.c
        for _ in range(int(rng.integers(1, 4))):
            out_features = self.ints(3, 5, 8, 10)
            if rng.random() < 0.6:
                trans_b = int(rng.integers(0, 2))
                w = rng.normal(0, 1 / np.sqrt(features), (out_features, features))
                weight = self.const(w if trans_b else w.T, "fc_w")
                inputs = [flat, weight]
                if rng.random() < 0.8:
                    bias_shape = [(out_features,), (1, out_features)][int(rng.integers(2))]
                    inputs.append(self.const(rng.normal(0, 0.1, bias_shape), "fc_b"))
                attributes = {"transB": trans_b}
                if rng.random() < 0.3:
                    attributes["alpha"] = float(rng.choice([0.5, 2.0]))
                if rng.random() < 0.3:
                    attributes["beta"] = float(rng.choice([0.0, 0.5, 2.0]))
                flat = self.b.op("Gemm", inputs, attributes)
            else:
                w = rng.normal(0, 1 / np.sqrt(features), (features, out_features))
                flat = self.b.op("MatMul", [flat, self.const(w, "mm_w")])
                if rng.random() < 0.5:
                    flat = self.b.op("Add", [flat, self.const(rng.normal(0, 0.1, out_features))])
            features = out_features
            if rng.random() < 0.4:
                flat = self.b.op("Relu", [flat])
        return flat

    def build(self) -> ir.Model:
        rng = self.rng
        c, h, w = self.ints(1, 2, 3, 4, 8), int(rng.integers(5, 13)), int(rng.integers(5, 13))
        batch = "batch" if self.dynamic else self.ints(1, 2)
        self.add(self.b.input("input", [batch, c, h, w]), c, h, w)
        if rng.random() < 0.15:
            self.add(self.b.input("input2", [batch, c, h, w]), c, h, w)
        motifs = [
            (self.conv, 6),
            (lambda x: self.batch_norm(self.conv(x)), 6),
            (self.branches, 4),
            (self.linear_chain, 3),
            (self.residual, 2),
            (self.batch_norm, 2),
            (self.activation, 5),
            (self.broadcast, 3),
            (self.binary, 2),
            (self.concat, 2),
            (self.split, 1),
            (self.slice, 1),
            (self.pool_op, 2),
            (self.conv_transpose, 1),
            (self.reshape_like, 1),
            (self.resize, 1),
            (self.pad, 1),
            (self.matmul4d, 1),
        ]
        weights = np.array([m[1] for m in motifs], float)
        for _ in range(int(rng.integers(2, 9))):
            motif = motifs[int(rng.choice(len(motifs), p=weights / weights.sum()))][0]
            x = self.pick()
            if x.h * x.w > 400 or x.c > 24:  # keep models small: shrink before going on
                x = self.pool_op(x) if x.h * x.w > 400 else self.conv(x, 8, (1, 1), 1, 1, [0] * 4)
            motif(x)
        outputs = [self.head(self.pool[-1])]
        for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):
            candidate = self.pick(recent=0.0).value
            if candidate not in outputs and not candidate.is_graph_input():
                outputs.append(candidate)
        for index, value in enumerate(outputs):
            self.b.output(value, f"output{index}")
        model = self.b.build(producer="lightir.testing.fuzz")
        for value in model.graph.outputs:
            if value.type is None or value.shape is None:
                raise AssertionError(f"generator bug: output {value.name} has no inferred type")
        return model


def random_model(seed: int) -> ir.Model:
    """A random valid model (see the module docstring); the same seed gives the same model."""
    return _Generator(seed).build()


def model_digest(model: ir.Model) -> str:
    """A digest of a model's structure and weights, to prove it was left unchanged."""
    digest = hashlib.sha256()
    proto = ir.to_proto(model)
    digest.update(proto.SerializeToString(deterministic=True))
    return digest.hexdigest()


@dataclass
class Outcome:
    """What one pipeline did to one model, and the oracle's verdict.

    ``verdict``: "ok"; "bug" (a crash, a wrong exact result, an invalid result, a modified
    input); "invalid-model" (lightir refused the generated model: a generator bug, counted
    apart and failing the run all the same); or "fresh-over-budget" (a lossy result the
    verifier accepted that misses its budget on the oracle's fresh inputs: the budget is a
    statistical claim about inputs like the verification ones, so this is counted and shown,
    not called a bug).
    """

    pipeline: str
    status: str  # changed / unchanged / rolled-back / crashed
    verdict: str
    problem: str = ""
    fired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True unless the verdict is a bug."""
        return self.verdict != "bug"


# Options the fuzzer gives a pass instead of its defaults. The generator's layers have 4-32
# channels; prune's default rounds to the measured channel block (16 on AVX-512), which
# leaves most of them whole, and the fuzzer is there to exercise the surgery.
FUZZ_OPTIONS = {"prune": "prune{round=8}"}


def fuzz_pipelines() -> list[str]:
    """Every registered pass (with :data:`FUZZ_OPTIONS`), then the named pipelines."""
    from lightir.registry import all_passes, all_pipelines

    return [FUZZ_OPTIONS.get(name, name) for name in sorted(all_passes())] + sorted(all_pipelines())


def synthesized_calibration(model: ir.Model, rows: int, seed: int) -> CalibrationData:
    """``rows`` synthesized samples as calibration data (whole batches of a fixed batch)."""
    specs = input_specs(model)
    batch = 1 if specs[0].dynamic_batch else int(specs[0].shape[0])
    batches = synthesize(specs, samples=rows if batch == 1 else batch, seed=seed)
    while sum(len(next(iter(b.values()))) for b in batches) < rows:
        batches += synthesize(specs, samples=batch, seed=seed + len(batches))
    return CalibrationData({k: np.concatenate([b[k] for b in batches]) for k in batches[0]})


def check_pass(model: ir.Model, pipeline: str, *, seed: int = 0) -> Outcome:
    """Run ``pipeline`` on ``model`` and judge the result (see the module docstring)."""
    import lightir
    from lightir.pipeline import expand, flatten, parse_pipeline

    passes = flatten(expand(parse_pipeline(pipeline)))
    exact = all(p.contract.is_exact for p in passes)
    before = model_digest(model)
    try:
        try:
            result = lightir.optimize(model, pipeline, seed=seed, threads=1)
        except UsageError as exc:
            if "calib" not in str(exc):
                raise
            # A pass that needs data (compress) gets synthesized calibration samples.
            calibration = synthesized_calibration(model, CALIBRATION_ROWS, seed + 104_729)
            result = lightir.optimize(model, pipeline, seed=seed, threads=1, calib=calibration)
    except InputError as exc:  # the model itself is unusable: a generator problem, not a pass's
        return Outcome(pipeline, "crashed", "invalid-model", str(exc))
    except Exception as exc:  # optimize itself must not raise on a valid model
        trace = traceback.format_exc(limit=-3)
        return Outcome(pipeline, "crashed", "bug", f"{type(exc).__name__}: {exc}\n{trace}")
    if model_digest(model) != before:
        return Outcome(pipeline, "changed", "bug", "the input model was modified")
    records = result.report.records
    fired = sorted({r.name for r in records if r.status == "changed"})
    rolled = [r for r in records if r.status == "rolled-back"]
    if rolled:
        message = rolled[0].message
        benign = rolled[0].failure == "contract" and rolled[0].contract != "exact"
        return Outcome(pipeline, "rolled-back", "ok" if benign else "bug", message, fired)
    if not fired:
        return Outcome(pipeline, "unchanged", "ok")
    # The oracle: the original model under onnxruntime, on inputs the verifier never saw.
    batches = synthesize(input_specs(model), samples=3, seed=seed + 7919)
    try:
        expected = OrtModel(model, threads=1).run_all(batches)
        actual = OrtModel(result.model, threads=1).run_all(batches)
    except Exception as exc:
        return Outcome(pipeline, "changed", "bug", f"result does not run: {exc}", fired)
    if list(expected[0]) != list(actual[0]):
        return Outcome(pipeline, "changed", "bug", f"outputs {list(actual[0])}", fired)
    noise = rounding_noise(model, batches, expected, seed=seed, threads=1) if exact else 0.0
    budget = pipeline_budget(passes, model, {}, noise)
    problems = violations(compare_outputs(expected, actual), budget)
    if not problems:
        return Outcome(pipeline, "changed", "ok", "", fired)
    verdict = "bug" if exact else "fresh-over-budget"
    return Outcome(pipeline, "changed", verdict, "oracle: " + "; ".join(problems), fired)


def shrink(model: ir.Model, fails: Callable[[ir.Model], bool], max_rounds: int = 50) -> ir.Model:
    """A smaller model on which ``fails`` still holds (greedy node cutting)."""
    current = clone_model(model)
    for _ in range(max_rounds):
        progress = False
        size = _size(current)
        for candidate in _candidates(current):
            if _size(candidate) >= size:
                continue
            try:
                ok = fails(candidate)
            except Exception:
                ok = False
            if ok:
                current, progress = candidate, True
                break
        if not progress:
            break
    return current


def _size(model: ir.Model) -> tuple[int, int]:
    return len(list(model.graph)) + len(model.graph.outputs), len(model.graph.initializers)


def _candidates(model: ir.Model):
    """Models with one node cut out or one graph output dropped."""
    if len(model.graph.outputs) > 1:
        for index in range(len(model.graph.outputs)):
            candidate = clone_model(model)
            candidate.graph.outputs.pop(index)
            _tidy(candidate)
            yield candidate
    names = [node.name for node in model.graph]
    for name in reversed(names):
        for mode in ("bypass", "cut"):
            candidate = clone_model(model)
            node = next(n for n in candidate.graph if n.name == name)
            try:
                if not _remove(candidate, node, mode) or not _tidy(candidate):
                    continue
            except Exception:  # a cut the IR refuses: try the next one
                continue
            yield candidate


def _remove(model: ir.Model, node: ir.Node, mode: str) -> bool:
    graph = model.graph
    for out in node.outputs:
        if out.shape is None or out.type is None:
            return False
        replacement = None
        if mode == "bypass":
            replacement = next(
                (
                    v
                    for v in node.inputs
                    if v is not None
                    and v.const_value is None
                    and v.shape == out.shape
                    and v.dtype == out.dtype
                ),
                None,
            )
            if replacement is None:
                return False
        else:
            if not out.uses() and not out.is_graph_output():
                continue
            replacement = ir.val(f"{out.name}_cut", out.dtype, ir.Shape(list(out.shape)))
            graph.inputs.append(replacement)
        if out.is_graph_output():
            if replacement.is_graph_output() or replacement.is_graph_input():
                return False
            graph.outputs[graph.outputs.index(out)] = replacement
        out.replace_all_uses_with(replacement)
    graph.remove(node, safe=True)
    return True


def _tidy(model: ir.Model) -> bool:
    """Drop what became unused; False when the model has no inputs or outputs left."""
    ir.passes.common.RemoveUnusedNodesPass()(model)
    graph = model.graph
    for value in list(graph.inputs):
        if not value.uses() and len(graph.inputs) > 1 and not value.is_graph_output():
            graph.inputs.remove(value)
    real_inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    return bool(real_inputs) and bool(graph.outputs)
