"""Static int8 quantization to QDQ ONNX that onnxruntime runs with its integer kernels.

Steps:

1. BatchNormalization is folded into the convolutions (fold-bn's rules).
2. Activations that feed or leave a quantizable op (Conv, Gemm, MatMul with a constant
   weight, Add, MaxPool, AveragePool, GlobalAveragePool, Concat) are calibrated on the
   calibration data (or synthesized inputs) with streamed histograms
   (:mod:`lightir.quant.calibration`: ``minmax``, ``percentile``, ``entropy``, ``mse``).
   ``percentile`` (99.99th of ``|x|``) is the default: against ``minmax``, with the same
   automatic mixed precision, the evaluation mask IoU of PP-OCR's detectors went 0.931 ->
   0.952 (v6 small), 0.935 -> 0.962 (seal), 0.964 -> 0.981 (v6 tiny), 0.971 -> 0.973 (v5),
   ddddocr's char accuracy 0.980 -> 0.993, and PP-OCRv6 tiny rec was kept (char accuracy
   1.000) where minmax was rolled back; classifiers and MTCNN R/O-Net were equal.
3. Each such activation gets a QuantizeLinear -> DequantizeLinear pair with per-tensor uint8
   parameters. On this kind of x86 machine (AVX2, no VNNI), uint8 activations with int8
   weights (U8S8) ran 1.4-3.4x faster than int8 activations (S8S8) in onnxruntime
   (tools/bench_int8.py). A Relu or Clip(0, 6) right after a quantized op is absorbed into
   the output's range (zero point 0), as onnxruntime's own QDQ fusion expects.
4. Weights become int8 initializers, symmetric and per output channel, with a
   DequantizeLinear; no float copy is kept. ``reduce-range=true`` uses 7-bit weights, which
   cannot saturate AVX2's u8 x s8 pairwise int16 multiply-add. Measured here with onnxruntime
   1.32 on the zoo models and the digits fixture, full 8-bit weights were as or more accurate
   (resnet cosine 0.99988 vs 0.99961), so 8 bits are the default. Biases become int32 with
   scale ``s_x * s_w``.

Before quantizing, ``bias-correct`` runs (``bias-correct=true``, the default). It pre-corrects
each bias for the mean error of the weight rounding. Measured cosine against fp32:
mobilenetv2 0.999855 -> 0.999976, resnet 0.999888 -> 0.999955, vgg 0.999753 -> 0.999799.
Cross-layer equalization (``equalize``, exact: Conv -> Relu/PRelu -> Conv pairs) runs first by
default. It did not change the zoo models, but on PP-OCRv6's small text detector (HGNet, ReLU)
the automatic mixed precision needed 30 float ops holding 47% of the MACs without it (int8
1.03x slower than fp32) and 19 holding 24% with it (0.78x, mask IoU 0.958); on PP-OCRv6
tiny rec, the PP-OCRv5 line classifier, ddddocr and MTCNN PNet the task metrics moved by at
most 0.3 points (tools/README.md has the corpus table).
``equalize=false`` turns it off.

``keep-fp32=NODE+NODE`` keeps the named layers in float32. ``keep-fp32=auto`` (the default)
first scores the all-int8 model against fp32 on the calibration batches (cosine per output,
top-1 along the Softmax axis for probability outputs, and the soft IoU of probability maps;
the worst output counts). Below ``auto-cosine`` (0.99, a margin over the contract's 0.98
since verification runs on other samples) or ``auto-iou`` (0.96, a margin over the 0.95 mask
IoU a text detector needs), every quantizable op's sensitivity is measured and the fewest
most sensitive ops that meet the targets are kept float32, at most half of them (see
``_auto_keep``).
Real models need it: PP-OCRv5's detector is at cosine 0.94 all-int8 (rolled back) and
keeps its mask IoU at 0.96 with the sensitive early layers float. ``keep-fp32=`` (empty) is
all-int8. The stats list the ops that run in int8 (``int8_ops``) and those kept float
(``float_ops``). The reasons are in ``--explain``.

Q/DQ pairs go only around ops onnxruntime fuses into integer kernels. A tensor whose
consumers all run in float keeps its float path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from lightir.data import input_specs, synthesize
from lightir.errors import PassDeclined
from lightir.onnx_bridge import Probe
from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.passes.bias_correct import correct_biases, correctable_layers, input_means
from lightir.passes.equalize import Equalize
from lightir.passes.fold_bn import RULES as FOLD_BN_RULES
from lightir.quant.calibration import Calibrator
from lightir.registry import register_pass
from lightir.rewrite import apply_rules, new_initializer, unique_name, unique_node_name
from lightir.verify import LAYOUT_OPS, SQUASHING_OPS

logger = logging.getLogger(__name__)

WEIGHTED = {"Conv", "Gemm", "MatMul"}
ACTIVATION_OPS = {"Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat"}
ABSORBED = {"Relu", "Clip"}
# Ops that mean a model is quantized already (static QDQ, dynamic, or integer kernels).
QUANTIZED = {
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul",
}
# Concat inputs whose value ranges differ more than this are not put under one scale.
MIXED_RANGE = 8.0
# Ops that only squash or move values at the end of a model: what feeds them is a "head".
HEAD_OPS = SQUASHING_OPS | LAYOUT_OPS | {"LogSoftmax"}
SAME_SCALE = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
# Ops that only move values: a chain of them between two quantized ops runs on uint8.
MOVES = (SAME_SCALE - {"MaxPool"}) | {"Gather"}


class ShuffleAsGather(RewriteRuleClassBase):
    """A channel shuffle becomes one ``Gather(axis=1)``: exactly the same values.

    ``Reshape(N,g,C/g,...) -> Transpose(0,2,1,...) -> Reshape(N,C,...)`` permutes channels.

    onnxruntime runs integer convolutions in NHWC and cancels the layout transposes between
    them; it moves a Gather to NHWC but not a 5-D Transpose, so int8 ShuffleNet spent 4.5 of
    its 8.4 ms in generic uint8 transposes (fp32: 4.7 ms in all). With the Gather, int8 runs
    in 4.5 ms (measured with onnxruntime 1.32, one thread, on the onnx test ShuffleNet).
    """

    def __init__(self) -> None:
        super().__init__(name="shuffle-as-gather")

    def pattern(self, op, x, split, joined):
        grouped = op.Reshape(x, split, _outputs=["grouped"])
        swapped = op.Transpose(grouped, _outputs=["swapped"])
        return op.Reshape(swapped, joined, _outputs=["shuffled"])

    def check(self, context, x, split, joined, grouped, swapped, shuffled) -> MatchResult:
        result = MatchResult()
        shapes = [v.shape for v in (x, grouped, shuffled)]
        if any(shape is None for shape in shapes):
            return result.fail("shapes not inferred")
        source, middle, out = (list(shape) for shape in shapes)
        rank = len(source)
        perm = list(swapped.producer().attributes.get_ints("perm", []))
        if rank < 3 or len(middle) != rank + 1 or perm != [0, 2, 1, *range(3, rank + 1)]:
            return result.fail("not a channel shuffle (Reshape to N,g,C/g,... then swap 1, 2)")
        channels, groups, width = source[1], middle[1], middle[2]
        if not all(isinstance(d, int) for d in (channels, groups, width)):
            return result.fail("channel count is not static")
        if groups * width != channels or middle[0] != source[0] or middle[3:] != source[2:]:
            return result.fail("the Reshape does more than split the channel axis")
        if out != source:
            return result.fail("the shuffle does not restore the input's shape")
        if any(v.uses().__len__() != 1 or v.is_graph_output() for v in (grouped, swapped)):
            return result.fail("an intermediate tensor is read elsewhere")
        return result

    def rewrite(self, op, x, split, joined, grouped, swapped, shuffled):
        groups, width = grouped.shape[1], grouped.shape[2]
        order = np.arange(groups * width).reshape(groups, width).T.reshape(-1)
        indices = new_initializer(op, shuffled.producer(), "order", order, ir.DataType.INT64)
        return op.Gather(x, indices, axis=1)


@dataclass(frozen=True)
class Options:
    """Options of int8."""

    calibration: Literal["minmax", "percentile", "entropy", "mse"] = "percentile"
    reduce_range: bool = False
    bias_correct: bool = True
    equalize: bool = True
    keep_fp32: str = "auto"
    auto_cosine: float = 0.99
    auto_iou: float = 0.96
    batches: int = 8

    def __post_init__(self) -> None:
        if self.batches < 1:
            raise ValueError(f"batches must be >= 1, got {self.batches}")


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def _is_head(value: ir.Value, depth: int = 0) -> bool:
    """A graph output, or a value that reaches one only through squashing and layout ops.

    Such values are not requantized to uint8: the outputs are what the task reads (class
    scores, a probability map), and a Softmax over logits rounded to 1/255 of their range
    loses the ranking of close classes (PP-OCRv6's recognizer: cosine 0.94).
    """
    if value.is_graph_output():
        return True
    if depth > 8:
        return False
    return any(
        user.op_type in HEAD_OPS and any(_is_head(out, depth + 1) for out in user.outputs)
        for user, _ in value.uses()
    )


def _op_costs(model: ir.Model, names: list[str], batch: dict) -> dict[str, float]:
    """Work of each named op for one sample of ``batch``.

    MACs, or output elements when the op multiplies nothing (Add, pools, Concat); 1 where
    shapes cannot be inferred.
    """
    from lightir.analysis.cost import inferred_shapes, node_macs

    try:
        shapes = inferred_shapes(model, {k: (1, *np.shape(v)[1:]) for k, v in batch.items()})
    except Exception:  # noqa: BLE001 - a ranking aid: sensitivity alone still works
        shapes = {}
    costs = {}
    for node in model.graph:
        if node.name in names:
            out = shapes.get(node.outputs[0].name)
            static = out and all(isinstance(d, int) for d in out)
            elements = float(np.prod(out)) if static else 1.0
            costs[node.name] = max(float(node_macs(node, shapes)) if shapes else 0.0, elements, 1.0)
    return {n: costs.get(n, 1.0) for n in names}


def _smallest(ok, low: int, limit: int) -> int | None:
    """The smallest count in (low, limit] with ``ok(count)``, or None if ``ok(limit)`` fails.

    Doubling, then bisection; ``ok`` is taken to be monotone.
    """
    high = max(1, 2 * low)
    while not ok(min(high, limit)):
        if high >= limit:
            return None
        low, high = high, 2 * high
    high = min(high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        if ok(middle):
            high = middle
        else:
            low = middle
    return high


def _halves(batches: list[dict]) -> tuple[list[dict], list[dict]]:
    """The samples of ``batches`` split in two halves (the second empty for one sample)."""
    if all(len(next(iter(b.values()))) == 1 for b in batches):  # a fixed batch of one
        return batches[::2], batches[1::2]
    first, second = [], []
    for batch in batches:
        rows = len(next(iter(batch.values())))
        cut = (rows + 1) // 2
        first.append({k: v[:cut] for k, v in batch.items()})
        if rows - cut:
            second.append({k: v[cut:] for k, v in batch.items()})
    return first, second


def _weight_axis(node: ir.Node) -> int | None:
    """The output-channel axis of the node's weight, or None when it cannot be quantized."""
    weight = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype != np.float32:
        return None
    if any(user is not node for user, _ in node.inputs[1].uses()):
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0) or node.attributes.get_float("alpha", 1.0) != 1:
            return None
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul" and weight.ndim == 2:
        return 1
    return None


class Quantizer:
    """Plans and writes the QDQ form of one model."""

    def __init__(self, model: ir.Model, options: Options, context: PassContext) -> None:
        self.model, self.options, self.context = model, options, context
        self.graph = model.graph

    def quantized_nodes(self) -> list[ir.Node]:
        nodes = []
        for node in self.graph:
            if node.op_type in WEIGHTED and _weight_axis(node) is not None:
                nodes.append(node)
            elif node.op_type in ACTIVATION_OPS and node.outputs[0].dtype == ir.DataType.FLOAT:
                if node.op_type == "Add" and any(_const(v) is not None for v in node.inputs):
                    # A bias or epsilon add (LayerNorm's var + eps): onnxruntime has no integer
                    # kernel for it, and uint8 would round the variance to zero.
                    continue
                nodes.append(node)
            elif node.op_type in WEIGHTED:
                self.context.decline(node, "weight is not a constant float tensor of its own")
        return nodes

    def absorbed_activation(self, node: ir.Node) -> ir.Node | None:
        """A Relu / Clip(0, 6) that alone consumes ``node``'s output and can be absorbed."""
        out = node.outputs[0]
        uses = list(out.uses())
        if len(uses) != 1 or out.is_graph_output():
            return None
        user = uses[0][0]
        if user.outputs[0].is_graph_output():
            return None
        if user.op_type == "Relu":
            return user
        if user.op_type == "Clip":
            low = _const(user.inputs[1]) if len(user.inputs) > 1 else None
            if low is not None and float(np.asarray(low).ravel()[0]) == 0.0:
                return user
        return None

    def activations(self, nodes: list[ir.Node]) -> list[ir.Value]:
        """The float tensors that get a Q/DQ pair (inputs and outputs of quantized nodes)."""
        chosen: dict[str, ir.Value] = {}
        for node in nodes:
            inputs = node.inputs[:1] if node.op_type in WEIGHTED else node.inputs
            for value in inputs:
                if value is not None and _const(value) is None:
                    chosen[value.name] = value
                    # Back through a chain of moves (ShuffleNet's Reshape -> Transpose ->
                    # Reshape channel shuffle): a Q/DQ pair on each link, with the chain's
                    # one scale, lets onnxruntime move uint8 data. Left in float32 between
                    # a DQ and a Q, the shuffle's transposes took 4.5 of int8 ShuffleNet's
                    # 8.4 ms, against 0.2 ms in the fp32 model.
                    link = value.producer()
                    while (
                        link is not None
                        and link.op_type in MOVES
                        and all(_const(v) is not None for v in link.inputs[1:] if v is not None)
                        and len(value.uses()) == 1
                        and link.inputs[0] is not None
                        and _const(link.inputs[0]) is None
                        and link.inputs[0].dtype == ir.DataType.FLOAT
                    ):
                        value = link.inputs[0]
                        chosen[value.name] = value
                        link = value.producer()
            absorbed = self.absorbed_activation(node)
            out = absorbed.outputs[0] if absorbed is not None else node.outputs[0]
            if not _is_head(out):
                chosen[out.name] = out
        return [v for v in chosen.values() if v.dtype == ir.DataType.FLOAT]

    def mixed_range_concats(self, nodes: list[ir.Node]) -> dict[str, str]:
        """Concats whose inputs' ranges differ by more than ``MIXED_RANGE``, with the reason.

        One uint8 scale over box coordinates (0-320) and class scores (0-1) leaves the scores
        two or three levels; such a Concat stays float and each input keeps its own scale.
        """
        mixed = {}
        for node in nodes:
            if node.op_type != "Concat":
                continue
            spans = [
                self.ranges[v.name][1] - self.ranges[v.name][0]
                for v in node.inputs
                if v is not None and v.name in self.ranges
            ]
            spans = [span for span in spans if span > 0]
            if len(spans) >= 2 and max(spans) > MIXED_RANGE * min(spans):
                mixed[node.name] = (
                    f"inputs span {min(spans):.3g} to {max(spans):.3g}: one scale would "
                    "crush the narrow ones; kept float, each input keeps its own scale"
                )
        return mixed

    def calibrate(self, values: list[ir.Value]) -> dict[str, tuple[float, float]]:
        calibration = self.context.calibration
        if calibration is not None:
            batches = list(calibration.batches(batch_size=8, limit=8 * self.options.batches))
        else:
            specs = input_specs(self.model)
            batches = [synthesize(specs, samples=2, seed=100 + i)[0] for i in range(4)]
        calibrator = Calibrator(v.name for v in values)
        probe = Probe(self.model, [v.name for v in values])
        for batch in batches:  # one batch at a time: memory does not grow with the data
            calibrator.update(probe.run(batch))
        return calibrator.ranges(self.options.calibration)

    def prepare(self) -> list[ir.Node]:
        """Fold BN, equalize and bias-correct as configured, then calibrate (``self.params``)."""
        apply_rules(self.model, FOLD_BN_RULES)
        common_passes.ShapeInferencePass()(self.model)
        apply_rules(self.model, [ShuffleAsGather.rule()])
        common_passes.RemoveUnusedNodesPass()(self.model)
        if self.options.equalize:
            Equalize().run(self.model, self.context)
        common_passes.ShapeInferencePass()(self.model)
        nodes = self.quantized_nodes()
        values = self.activations(nodes)
        # Bias correction applies to the layers actually quantized, so it happens in write();
        # the input means are measured once here.
        self.means = (
            input_means(self.model, correctable_layers(self.model), self.context.calibration, 256)
            if self.options.bias_correct
            else {}
        )
        ranges = self.calibrate(values) if values else {}
        self.ranges = ranges
        self.params = {name: self._activation_params(*ranges[name]) for name in ranges}
        # Ops that only move values keep their input's parameters: onnxruntime then runs them
        # on int8 data without requantizing (MaxPool, Flatten, Reshape, ...).
        for node in self.graph:
            if node.op_type in SAME_SCALE and node.inputs[0] is not None:
                source, target = node.inputs[0].name, node.outputs[0].name
                if source in self.params and target in self.params:
                    self.params[target] = self.params[source]
        return nodes

    def write(self, names: set[str], params: dict[str, tuple[float, int]]) -> dict:
        """Rewrite the nodes named ``names`` of this quantizer's model to QDQ."""
        nodes = [n for n in self.graph if n.name in names]
        wanted = {v.name for v in self.activations(nodes)}
        if self.options.bias_correct:
            bits = 7 if self.options.reduce_range else 8
            correct_biases(correctable_layers(self.model, names), self.means, bits, self.context)
        for node in nodes:
            absorbed = self.absorbed_activation(node)
            if absorbed is not None:
                # The output Q (zero point 0 at 0) does the clamp: the Relu / Clip goes.
                out, relu_out = node.outputs[0], absorbed.outputs[0]
                relu_out.replace_all_uses_with(out)
                self.graph.remove(absorbed, safe=True)
                out.name = relu_out.name
        for node in nodes:
            if node.op_type in WEIGHTED:
                self._quantize_weight(node, params[node.inputs[0].name][0])
        by_name = {v.name: v for v in self.graph.inputs}
        by_name.update({o.name: o for n in self.graph for o in n.outputs})
        for name in wanted:
            if name in by_name and name in params:
                self._insert_qdq(by_name[name], *params[name])
        common_passes.RemoveUnusedNodesPass()(self.model)
        return {
            "int8_ops": sorted(n.name for n in nodes),
            "qdq_pairs": len(wanted),
            "int8_weights": sum(1 for n in nodes if n.op_type in WEIGHTED),
        }

    def run(self) -> dict:
        nodes = self.prepare()
        if not nodes:
            return {"int8_ops": []}
        keep = {k for k in self.options.keep_fp32.split("+") if k and k != "auto"}
        unknown = keep - {n.name for n in nodes}
        for name in sorted(unknown):
            self.context.decline(name, "keep-fp32 names no quantizable node")
        for name, reason in self.mixed_range_concats(nodes).items():
            keep.add(name)
            self.context.decline(name, reason)
        if "auto" in self.options.keep_fp32.split("+"):
            keep |= self._auto_keep([n.name for n in nodes if n.name not in keep])
        stats = self.write({n.name for n in nodes} - keep, self.params)
        stats["float_ops"] = sorted(keep)
        for name in sorted(keep):
            self.context.decline(name, "kept float32 (keep-fp32)")
        return stats

    def _auto_keep(self, names: list[str]) -> set[str]:
        """Ops to keep in float32 so that the model meets ``auto-cosine`` and ``auto-iou``.

        Each output is scored against fp32 on the calibration batches the pass may fit on:
        the verifier's agreement (:attr:`OutputMetrics.agreement`: cosine, top-1 along the
        Softmax axis for probabilities, both for sequence logits) against ``auto-cosine``,
        and for probability maps (Sigmoid heads, per-position Softmax) their soft IoU
        (:func:`lightir.verify.soft_iou`) against ``auto-iou``: a DB text detector's map
        keeps cosine 0.99 while its mask IoU falls to 0.94. A result's *deficit* is the worst
        ``(1 - score) / (1 - target)`` over outputs and criteria; it meets the targets at <= 1.

        When all-int8 misses, every quantizable op's sensitivity (the deficit when it alone
        is int8, on two samples) is measured, and the ops are ranked by sensitivity per MAC
        (sensitivity alone when that ranking cannot meet the targets). The smallest ``k`` of
        the ranking kept float that meets the targets on half of the samples is found by
        doubling, then bisection, and raised the same way until the other half meets them
        too (at most half of the ops are kept float).
        """
        from lightir.ir_util import clone_model
        from lightir.onnx_bridge import OrtModel
        from lightir.verify import compare_outputs, output_scales

        calibration = self.context.calibration
        if calibration is not None:
            batches = list(calibration.batches(batch_size=8, limit=16))
        else:
            batches = [synthesize(input_specs(self.model), samples=8, seed=7)[0]]
        scales = output_scales(self.model)
        reference = OrtModel(self.model).run_all(batches)
        targets = (self.options.auto_cosine, self.options.auto_iou)

        def deficit(quantized: set[str], runs=batches, ref=reference) -> float:
            trial = clone_model(self.model)
            quantizer = Quantizer(trial, self.options, PassContext())
            quantizer.means, quantizer.ranges = self.means, self.ranges
            quantizer.write(quantized, self.params)
            worst = 0.0
            for m in compare_outputs(ref, OrtModel(trial).run_all(runs), scales):
                for score, target in zip((m.agreement, m.soft_iou), targets):
                    if score is not None:
                        worst = max(worst, (1.0 - score) / max(1.0 - target, 1e-12))
            return worst

        everything = set(names)
        if deficit(everything) <= 1.0:
            return set()
        # Ranking needs an order, not a precise figure: two samples suffice.
        # A model with a fixed batch dim takes whole batches only.
        fixed = not all(spec.dynamic_batch for spec in input_specs(self.model))
        one = batches[:1] if fixed else [{k: v[:2] for k, v in batches[0].items()}]
        one_reference = OrtModel(self.model).run_all(one)
        loss = {n: deficit({n}, one, one_reference) for n in names}
        limit = max(1, len(names) // 2)
        # The count is chosen on one half of the samples and confirmed on the other: the
        # smallest count that meets the targets on the samples it was chosen on sits at the
        # edge, and verification runs on samples the pass never saw (PP-OCRv6 tiny rec: kept
        # at top-1 0.99 on its own samples, 0.925 on the held-out ones, rolled back).
        fit, confirm = (batches[::2], batches[1::2]) if fixed else _halves(batches)
        fit_reference = OrtModel(self.model).run_all(fit)
        confirm_reference = OrtModel(self.model).run_all(confirm) if confirm else []

        def search(ranked: list[str]) -> int | None:
            """The fewest of ``ranked`` to keep float, or None if ``limit`` is not enough."""

            def meets(count: int, runs=fit, ref=fit_reference) -> bool:
                return deficit(everything - set(ranked[:count]), runs, ref) <= 1.0

            def both(count: int) -> bool:
                return meets(count) and (not confirm or meets(count, confirm, confirm_reference))

            count = _smallest(meets, 0, limit)
            if count is not None and not both(count):
                count = _smallest(both, count, limit)
            return count

        # Sensitivity per unit of work first: keeping a conv with 6% of the MACs float costs
        # more speed than keeping an Add float. Sensitivity alone when that cannot meet the
        # targets.
        costs = _op_costs(self.model, names, batches[0])
        by_value = sorted(names, key=lambda n: loss[n] / costs[n], reverse=True)
        by_loss = sorted(names, key=loss.get, reverse=True)
        for ranked in (by_value, by_loss):
            count = search(ranked)
            if count is not None:
                return set(ranked[:count])
        return set(by_loss[:limit])

    @staticmethod
    def _activation_params(low: float, high: float) -> tuple[float, int]:
        scale = (high - low) / 255.0 or 1.0
        zero_point = int(np.clip(round(-low / scale), 0, 255))
        return float(scale), zero_point

    def _new_initializer(self, base: str, array: np.ndarray) -> ir.Value:
        name = unique_name(self.graph, base)
        value = ir.val(name, const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def _quantize_weight(self, node: ir.Node, input_scale: float) -> None:
        axis = _weight_axis(node)
        weight = _const(node.inputs[1]).astype(np.float64)
        levels = 63 if self.options.reduce_range else 127
        moved = np.moveaxis(weight, axis, 0)
        peak = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
        scale = np.where(peak > 0, peak / levels, 1.0)
        bias = _const(node.inputs[2]) if len(node.inputs) > 2 else None
        if bias is not None and bias.size == scale.size:
            # The int32 bias is bias / (s_x * s_w): a channel with near-zero weights and a
            # real bias (a dead channel of PP-OCRv6's detector) would overflow int32. Such a
            # channel gets the smallest weight scale that keeps its bias in range.
            limit = 0.5 * np.iinfo(np.int32).max * input_scale
            scale = np.maximum(scale, np.abs(bias.astype(np.float64).reshape(-1)) / limit)
        shape = [1] * weight.ndim
        shape[axis] = -1
        quantized = np.clip(np.round(weight / scale.reshape(shape)), -levels, levels).astype(
            np.int8
        )
        base = node.inputs[1].name
        q_value = self._new_initializer(f"{base}_int8", quantized)
        s_value = self._new_initializer(f"{base}_scale", scale.astype(np.float32))
        z_value = self._new_initializer(f"{base}_zero_point", np.zeros_like(scale, np.int8))
        dq = ir.node(
            "DequantizeLinear",
            [q_value, s_value, z_value],
            {"axis": axis},
            name=unique_node_name(self.graph, f"{node.name}_weight_dq"),
        )
        dq.outputs[0].name = unique_name(self.graph, f"{base}_dequantized")
        dq.outputs[0].dtype, dq.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(weight.shape)
        self.graph.insert_before(node, dq)
        node.replace_input_with(1, dq.outputs[0])
        if (
            len(node.inputs) > 2
            and node.inputs[2] is not None
            and _const(node.inputs[2]) is not None
        ):
            bias = _const(node.inputs[2]).astype(np.float64)
            if bias.size == scale.size:
                bias_scale = (input_scale * scale).astype(np.float32)
                q_bias = np.round(bias.reshape(-1) / bias_scale).astype(np.int32)
                bname = node.inputs[2].name
                dq_bias = ir.node(
                    "DequantizeLinear",
                    [
                        self._new_initializer(f"{bname}_int32", q_bias),
                        self._new_initializer(f"{bname}_scale", bias_scale),
                        self._new_initializer(f"{bname}_zero_point", np.zeros_like(q_bias)),
                    ],
                    {"axis": 0},
                    name=unique_node_name(self.graph, f"{node.name}_bias_dq"),
                )
                dq_bias.outputs[0].name = unique_name(self.graph, f"{bname}_dequantized")
                dq_bias.outputs[0].dtype = ir.DataType.FLOAT
                dq_bias.outputs[0].shape = ir.Shape([q_bias.size])
                self.graph.insert_before(node, dq_bias)
                node.replace_input_with(2, dq_bias.outputs[0])

    def _insert_qdq(self, value: ir.Value, scale: float, zero_point: int) -> None:
        users = list(value.uses())  # before the Q node becomes one
        s_value = self._new_initializer(f"{value.name}_scale", np.array(scale, np.float32))
        z_value = self._new_initializer(f"{value.name}_zero_point", np.array(zero_point, np.uint8))
        quant = ir.node(
            "QuantizeLinear",
            [value, s_value, z_value],
            name=unique_node_name(self.graph, f"{value.name}_q"),
        )
        quant.outputs[0].name = unique_name(self.graph, f"{value.name}_quantized")
        quant.outputs[0].dtype, quant.outputs[0].shape = ir.DataType.UINT8, value.shape
        dequant = ir.node(
            "DequantizeLinear",
            [quant.outputs[0], s_value, z_value],
            name=unique_node_name(self.graph, f"{value.name}_dq"),
        )
        dequant.outputs[0].name = unique_name(self.graph, f"{value.name}_dequantized")
        dequant.outputs[0].dtype, dequant.outputs[0].shape = ir.DataType.FLOAT, value.shape
        producer = value.producer()
        if producer is None:
            self.graph.insert_before(self.graph[0], [quant, dequant])
        else:
            self.graph.insert_after(producer, [quant, dequant])
        for user, index in users:
            user.replace_input_with(index, dequant.outputs[0])
        # Graph outputs never get here (``_is_head``): they stay float.


@register_pass("int8", contract=Contract.lossy(min_cosine=0.98))
class Int8(Pass):
    """Static int8 quantization to QDQ (U8S8, per-channel weights) for integer kernels."""

    Options = Options
    min_opset = 13  # per-channel DequantizeLinear (axis)

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Fold BN, calibrate, and write the QDQ model."""
        quantized = sorted({n.op_type for g in model.graphs() for n in g if n.op_type in QUANTIZED})
        if quantized:
            raise PassDeclined(
                f"the model is already quantized ({', '.join(quantized)}); quantize the float "
                "model instead"
            )
        stats = Quantizer(model, self.options, context).run()
        return PassResult(model, modified=bool(stats.get("int8_ops")), stats=stats)
