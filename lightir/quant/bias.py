"""Bias correction for weight quantization (Nagel et al. 2019): the arithmetic.

Rounding a layer's weights to ``bits`` bits shifts the expected output of channel c by
``sum_{i,k} dW[c, i, k] * E[x_i]``; :func:`correct_biases` subtracts that shift from the bias.
Used by the ``bias-correct`` pass and by ``int8`` (on the layers it actually quantizes).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx_ir as ir

from lightir import progress
from lightir.analysis.bn_stats import bn_output_means
from lightir.onnx_bridge import Probe
from lightir.pass_base import PassContext
from lightir.quant.codes import symmetric_codes, weight_axis


def correctable_layers(model: ir.Model, only: Collection[ir.Node] | None = None) -> list[ir.Node]:
    """Conv / Gemm nodes with a constant weight and bias (restricted to ``only`` if given)."""
    return [
        n
        for n in model.graph
        if weight_axis(n) is not None
        and n.op_type in ("Conv", "Gemm")
        and (only is None or n in only)
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
    batches = calibration.batches(batch_size=8, limit=samples)
    for batch in progress.bar(batches, desc="int8: bias correction"):
        for name, array in probe.run(batch).items():
            axes = (0, *range(2, array.ndim))
            sums[name] = sums.get(name, 0.0) + array.astype(np.float64).sum(axis=axes)
            counts[name] = counts.get(name, 0) + array.size // array.shape[1]
    return {name: sums[name] / counts[name] for name in sums}


def correct_biases(
    layers: list[ir.Node],
    means: dict[str, np.ndarray],
    bits: int,
    context: PassContext,
    quantized: bool = False,
) -> int:
    """Subtract each layer's expected rounding shift from its bias; returns the count.

    ``quantized``: the layers are being quantized (int8), so a layer without an input mean
    is reported as quantized without the correction, not as declined.
    """
    corrected = 0
    levels = 2 ** (bits - 1) - 1
    for node in layers:
        mean = means.get(node.inputs[0].name)
        if mean is None:
            found = bn_output_means(node.inputs[0])
            mean = None if found is None else found[1]
        if mean is None:
            reason = "no calibration data and no BatchNormalization statistics for its input"
            if quantized:
                reason = f"quantized without bias correction: {reason} (give --calib)"
            context.decline(node, reason)
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
