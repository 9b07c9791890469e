"""Bias correction for weight quantization (Nagel et al. 2019).

Rounding a layer's weights to ``bits`` bits (symmetric, per output channel, exactly as
``int8`` and ``int8-weights`` do) shifts the expected output of channel c by
``sum_{i,k} dW[c, i, k] * E[x_i]``, where ``dW`` is the rounding error and ``E[x_i]`` the mean of
input channel i. This pass subtracts that shift from the bias ahead of quantization, so the
quantized model's outputs are centred where the float model's were.

``E[x]`` comes from the calibration data when given: the mean of the layer's input over samples
and positions. Without data it comes from the BatchNormalization (and Relu) feeding the layer:
``beta``, or ``E[relu(gamma z + beta)]`` for ``z ~ N(0, 1)``. That needs the BN still in the
graph, so run this pass before ``fold-bn``; otherwise layers without data are declined.
Border positions of padded convolutions see fewer inputs; the correction uses the interior
value there too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_ir as ir

from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.quant.bias import correct_biases, correctable_layers, input_means
from lightir.registry import register_pass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Options of bias-correct."""

    bits: int = 8
    samples: int = 256


@register_pass("bias-correct", contract=Contract.lossy(min_cosine=0.999))
class BiasCorrect(Pass):
    """Pre-correct biases for the mean error that weight quantization will introduce."""

    Options = Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Correct every Conv / Gemm with a bias and known input means."""
        layers = correctable_layers(model)
        means = input_means(model, layers, context.calibration, self.options.samples)
        corrected = correct_biases(layers, means, self.options.bits, context)
        return PassResult(model, modified=corrected > 0, stats={"corrected": corrected})
