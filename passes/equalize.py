"""Cross-layer equalization (Nagel et al. 2019, data-free quantization).

For two convolutions joined by a positively homogeneous activation, ``y = W2 relu(W1 x + b1)``,
scaling channel ``i`` of the first layer by ``1/s_i`` and the matching input channel of the
second by ``s_i`` leaves ``y`` unchanged, because ``relu(a / s) = relu(a) / s`` for ``s > 0``.
DFQ picks ``s_i = sqrt(r1_i / r2_i)``, where ``r1_i`` is the range of output channel i of W1
and ``r2_i`` the range of input channel i of W2. Both layers then have per-channel ranges
``sqrt(r1_i r2_i)``, so per-tensor quantization wastes less of its range. This matters most
for depthwise convs, whose channel ranges vary widely.

Pairs handled: a Conv (dense or depthwise) whose output reaches another Conv (dense or
depthwise) directly or through a Relu / LeakyRelu / PRelu (a per-channel slope is unchanged
by a per-channel positive scale), with no other consumer on the way. For a
depthwise second layer, channel i of its input is its weight row i. The pass sweeps all pairs
until the scales stop moving (``iterations``).

Declined, with a reason: Clip / ReLU6 between the layers (a scale would move the clip
threshold), shared weights, and grouped convs that are not depthwise. The pass only rescales
existing initializers, so it works on the weights directly rather than through a rewrite rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from lightir.pass_base import Pass, PassContext, PassResult
from lightir.quant.equalize import equalize
from lightir.registry import register_pass


@dataclass(frozen=True)
class Options:
    """Options of equalize."""

    iterations: int = 4


@register_pass("equalize", contract="exact")
class Equalize(Pass):
    """Cross-layer equalization of Conv -> (Relu) -> Conv pairs, depthwise included (DFQ)."""

    Options = Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Equalize every pair, sweeping until the scales settle."""
        pairs = equalize(model, context, self.options.iterations)
        return PassResult(model, modified=bool(pairs), stats={"pairs": pairs})
