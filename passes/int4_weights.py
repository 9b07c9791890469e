"""Weight-only int4 storage: per-channel symmetric 4-bit weights with a DequantizeLinear.

INT4 tensors and their DequantizeLinear need opset 21. A model declaring an older opset is
left unchanged, and the decline says so; convert the opset first. Compute stays float32, so
the gain is an 8x smaller weight file.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir.passes.common as common_passes

from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.quant.codes import quantize_weights
from lightir.registry import register_pass


@dataclass(frozen=True)
class Options:
    """Options of int4-weights."""

    min_size: int = 256


@register_pass("int4-weights", contract=Contract.lossy(min_cosine=0.95))
class Int4Weights(Pass):
    """Store weights as per-channel int4 with DequantizeLinear (needs opset 21)."""

    Options = Options
    min_opset = 21  # INT4 DequantizeLinear

    def run(self, model, context: PassContext) -> PassResult:
        """Quantize every eligible weight to 4 bits when the opset allows it."""
        opset = model.opset_imports.get("", 0)
        if opset < 21:
            context.decline("model", f"opset {opset} < 21 has no INT4 DequantizeLinear")
            return PassResult(model, modified=False)
        stats = quantize_weights(model, context, bits=4, min_size=self.options.min_size)
        common_passes.RemoveUnusedNodesPass()(model)  # the float weights that were replaced
        return PassResult(model, modified=stats["layers"] > 0, stats=stats)
