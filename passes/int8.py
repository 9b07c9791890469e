"""Static int8 quantization to QDQ ONNX that onnxruntime runs with its integer kernels.

Steps (the machinery is in :mod:`lightir.quant`):

1. BatchNormalization is folded into the convolutions: ``fold-bn`` is this pass's
   prerequisite, so the pass manager runs it first as its own verified step unless the
   pipeline already did.
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

from lightir.errors import PassDeclined
from lightir.ir_util import node_label
from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.quant.bias import correctable_layers, input_means
from lightir.quant.equalize import equalize
from lightir.quant.mixed import keep_float
from lightir.quant.plan import QUANTIZED, QdqPlan, plan_qdq
from lightir.quant.qdq import write_qdq
from lightir.registry import register_pass
from lightir.rewrite import apply_rules, new_initializer

logger = logging.getLogger(__name__)


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


@register_pass("int8", contract=Contract.lossy(min_cosine=0.98))
class Int8(Pass):
    """Static int8 quantization to QDQ (U8S8, per-channel weights) for integer kernels."""

    Options = Options
    min_opset = 13  # per-channel DequantizeLinear (axis)
    prerequisites = ("fold-bn",)

    def requires(self, model: ir.Model, context: PassContext) -> None:
        """A float model: one already quantized is declined."""
        quantized = sorted({n.op_type for g in model.graphs() for n in g if n.op_type in QUANTIZED})
        if quantized:
            raise PassDeclined(
                f"the model is already quantized ({', '.join(quantized)}); quantize the float "
                "model instead"
            )

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Prepare, plan, choose the float ops, and write the QDQ model."""
        options = self.options
        common_passes.ShapeInferencePass()(model)
        apply_rules(model, [ShuffleAsGather.rule()])
        common_passes.RemoveUnusedNodesPass()(model)
        if options.equalize:
            equalize(model, context)
        common_passes.ShapeInferencePass()(model)
        # Bias correction applies to the layers actually quantized, so it happens when the
        # plan is written; the input means are measured once here.
        means = (
            input_means(model, correctable_layers(model), context.calibration, 256)
            if options.bias_correct
            else {}
        )
        plan = plan_qdq(model, context, options.calibration, options.batches, means)
        if not plan.nodes:
            return PassResult(model, modified=False, stats={"int8_ops": []})
        keep = self._keep(plan, model, context)
        stats = self._write(model, plan, set(plan.nodes) - keep, context)
        stats["float_ops"] = sorted(node_label(n) for n in keep)
        for node in keep:
            context.decline(node, "kept float32 (keep-fp32)")
        return PassResult(model, modified=bool(stats["int8_ops"]), stats=stats)

    def _write(self, model, plan: QdqPlan, nodes: set[ir.Node], context: PassContext) -> dict:
        options = self.options
        return write_qdq(
            model,
            plan,
            nodes,
            reduce_range=options.reduce_range,
            bias_correct=options.bias_correct,
            context=context,
        )

    def _keep(self, plan: QdqPlan, model: ir.Model, context: PassContext) -> set[ir.Node]:
        """The ops kept in float32: named by ``keep-fp32``, mixed-range Concats, and ``auto``."""
        words = {k for k in self.options.keep_fp32.split("+") if k}
        keep = {n for n in plan.nodes if n.name and n.name in words}
        for name in sorted(words - {"auto"} - {n.name for n in keep}):
            context.decline(name, "keep-fp32 names no quantizable node")
        for node, reason in plan.mixed_range_concats().items():
            keep.add(node)
            context.decline(node, reason)
        if "auto" in words:
            candidates = [n for n in plan.nodes if n not in keep]
            keep |= keep_float(
                model,
                candidates,
                lambda trial, nodes: self._write(trial, plan, nodes, PassContext()),
                context.calibration,
                (self.options.auto_cosine, self.options.auto_iou),
            )
        return keep
