"""Experimental: binary weights (BWN, Rastegari et al. 2016), stored as int8 codes {-1, 1}.

Per output channel: ``w_b = alpha * sign(w)`` with ``alpha = mean|w|``, through a
DequantizeLinear, so compute stays float. Without retraining the accuracy loss is large; the
budget is loose on purpose (cos >= 0.5), and tools/README.md reports what it costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir.passes.common as common_passes

from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.quant.codes import dequantized_weight, eligible_weights
from lightir.registry import register_pass


@dataclass(frozen=True)
class Options:
    """Options of binary."""

    min_size: int = 256


@register_pass("binary", contract=Contract.lossy(min_cosine=0.5))
class Binary(Pass):
    """Experimental: binary weights {-a, +a} per channel (no retraining)."""

    Options = Options
    min_opset = 13  # per-channel DequantizeLinear (axis)

    def run(self, model, context: PassContext) -> PassResult:
        """Replace each eligible weight by its binary approximation."""
        count = 0
        for node, weight, axis in eligible_weights(model, context, self.options.min_size):
            moved = np.moveaxis(weight, axis, 0)
            alpha = np.abs(moved.reshape(moved.shape[0], -1)).mean(axis=1)
            codes = np.where(weight >= 0, 1, -1)
            dequantized_weight(node, 1, codes, np.where(alpha > 0, alpha, 1.0), axis)
            count += 1
        common_passes.RemoveUnusedNodesPass()(model)  # the float weights that were replaced
        return PassResult(model, modified=count > 0, stats={"layers": count})
