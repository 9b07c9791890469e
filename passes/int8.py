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

import onnx_ir as ir

from lightir.errors import PassDeclined
from lightir.ir_util import node_label
from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.quant.mixed import keep_float
from lightir.quant.plan import QUANTIZED, QdqPlan
from lightir.quant.prepare import prepare_int8
from lightir.quant.qdq import write_qdq
from lightir.registry import register_pass

logger = logging.getLogger(__name__)


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
        plan = prepare_int8(
            model,
            context,
            equalize_first=options.equalize,
            bias_correct=options.bias_correct,
            calibration=options.calibration,
            batches=options.batches,
        )
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
