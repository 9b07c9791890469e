"""Weight-only int8 storage: per-channel symmetric int8 weights with a DequantizeLinear.

Activations and compute stay float32: onnxruntime constant-folds each DequantizeLinear at
session start, so latency is unchanged and the file is about 4x smaller. Conv (axis 0),
ConvTranspose (axis 1), Gemm (axis 0 with transB, else 1) and MatMul (axis 1) weights of at
least ``min-size`` elements are stored this way.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir.passes.common as common_passes

from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.quant.codes import quantize_weights
from lightir.registry import register_pass


@dataclass(frozen=True)
class Options:
    """Options of int8-weights."""

    min_size: int = 256


@register_pass("int8-weights", contract=Contract.lossy(min_cosine=0.99))
class Int8Weights(Pass):
    """Store weights as per-channel int8 with DequantizeLinear (storage only, float compute)."""

    Options = Options
    min_opset = 13  # per-channel DequantizeLinear (axis)

    def run(self, model, context: PassContext) -> PassResult:
        """Quantize every eligible weight to 8 bits."""
        stats = quantize_weights(model, context, bits=8, min_size=self.options.min_size)
        common_passes.RemoveUnusedNodesPass()(model)  # the float weights that were replaced
        return PassResult(model, modified=stats["layers"] > 0, stats=stats)
