"""Experimental: ternary weights (TWN, Li et al. 2016), stored as int8 codes {-1, 0, 1}.

Per output channel: ``delta = 0.7 * mean|w|``, ``alpha = mean(|w| : |w| > delta)``, and
``w_t = alpha * sign(w) * [|w| > delta]``. The codes go through a DequantizeLinear with scale
``alpha``, so compute stays float. Without retraining the accuracy loss is large; the budget is
loose on purpose (cos >= 0.5). The pass exists to measure that loss honestly (see
tools/README.md), not as a default.
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
    """Options of ternary."""

    min_size: int = 256


@register_pass("ternary", contract=Contract.lossy(min_cosine=0.5))
class Ternary(Pass):
    """Experimental: ternary weights {-a, 0, +a} per channel (no retraining)."""

    Options = Options
    min_opset = 13  # per-channel DequantizeLinear (axis)

    def run(self, model, context: PassContext) -> PassResult:
        """Replace each eligible weight by its ternary approximation."""
        count = 0
        for node, weight, axis in eligible_weights(model, context, self.options.min_size):
            moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
            delta = 0.7 * np.abs(moved).mean(axis=1, keepdims=True)
            mask = np.abs(moved) > delta
            alpha = (np.abs(moved) * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
            codes = np.sign(moved) * mask
            codes = np.moveaxis(codes.reshape(np.moveaxis(weight, axis, 0).shape), 0, axis)
            dequantized_weight(node, 1, codes, np.where(alpha > 0, alpha, 1.0), axis)
            count += 1
        common_passes.RemoveUnusedNodesPass()(model)  # the float weights that were replaced
        return PassResult(model, modified=count > 0, stats={"layers": count})
