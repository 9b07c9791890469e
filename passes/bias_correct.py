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

import numpy as np
import onnx_ir as ir

from lightir.analysis.bn_stats import bn_output_means
from lightir.onnx_bridge import Probe
from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.quant.codes import symmetric_codes, weight_axis
from lightir.registry import register_pass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Options of bias-correct."""

    bits: int = 8
    samples: int = 256


def correctable_layers(model: ir.Model, only: set[str] | None = None) -> list[ir.Node]:
    """Conv / Gemm nodes with a constant weight and bias (restricted to ``only`` if given)."""
    return [
        n
        for n in model.graph
        if weight_axis(n) is not None
        and n.op_type in ("Conv", "Gemm")
        and (only is None or n.name in only)
        and len(n.inputs) > 2
        and n.inputs[2] is not None
        and n.inputs[1].const_value is not None
        and n.inputs[2].const_value is not None
    ]


def input_means(
    model: ir.Model, layers: list[ir.Node], calibration, samples: int
) -> dict[str, np.ndarray]:
    """Per-channel mean of each layer's input on the calibration data (running sums)."""
    if calibration is None or not layers:
        return {}
    probe = Probe(model, sorted({n.inputs[0].name for n in layers}))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in calibration.batches(batch_size=8, limit=samples):
        for name, array in probe.run(batch).items():
            axes = (0, *range(2, array.ndim))
            sums[name] = sums.get(name, 0.0) + array.astype(np.float64).sum(axis=axes)
            counts[name] = counts.get(name, 0) + array.size // array.shape[1]
    return {name: sums[name] / counts[name] for name in sums}


def correct_biases(
    layers: list[ir.Node], means: dict[str, np.ndarray], bits: int, context: PassContext
) -> int:
    """Subtract each layer's expected rounding shift from its bias; returns the count."""
    corrected = 0
    levels = 2 ** (bits - 1) - 1
    for node in layers:
        mean = means.get(node.inputs[0].name)
        if mean is None:
            found = bn_output_means(node.inputs[0])
            mean = None if found is None else found[1]
        if mean is None:
            context.decline(node, "no calibration data and no BatchNormalization statistics")
            continue
        weight = node.inputs[1].const_value.numpy().astype(np.float64)
        axis = weight_axis(node)
        codes, scale = symmetric_codes(weight, axis, levels)
        shape = [1] * weight.ndim
        shape[axis] = -1
        error = codes * scale.reshape(shape) - weight
        if node.op_type == "Conv":
            per_input = error.sum(axis=tuple(range(2, error.ndim)))  # (C_out, C_in/g)
            groups = node.attributes.get_int("group", 1)
            grouped = mean.reshape(groups, -1)  # input means of each group
            group_of = np.arange(per_input.shape[0]) // (per_input.shape[0] // groups)
            shift = (per_input * grouped[group_of]).sum(axis=1)
        elif axis == 0:  # Gemm with transB: (F_out, F_in)
            shift = error @ mean
        else:
            shift = mean @ error
        bias_value = node.inputs[2]
        bias = bias_value.const_value.numpy()
        if bias.size != shift.size:
            continue
        new = (bias.astype(np.float64) - shift.reshape(bias.shape)).astype(bias.dtype)
        bias_value.const_value = ir.tensor(new, name=bias_value.name)
        corrected += 1
    return corrected


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
