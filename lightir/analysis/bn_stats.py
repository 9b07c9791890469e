"""Data-free activation statistics read off a BatchNormalization's parameters."""

from __future__ import annotations

from math import erf, pi, sqrt

import numpy as np
import onnx_ir as ir


def bn_output_means(value: ir.Value) -> tuple[ir.Node, np.ndarray] | None:
    """The BN producing ``value`` (through an optional Relu) and ``E[value]`` per channel.

    Assumes the BN normalizes to ``z ~ N(0, 1)``: ``E[gamma z + beta] = beta``, and after a
    Relu, the rectified-normal mean ``beta Phi(t) + |gamma| phi(t)`` with ``t = beta / |gamma|``.
    """
    producer = value.producer()
    relu = False
    if producer is not None and producer.op_type == "Relu":
        relu, producer = True, producer.inputs[0].producer()
    if producer is None or producer.op_type != "BatchNormalization":
        return None
    params = [v.const_value for v in producer.inputs[1:3]]
    if any(p is None for p in params):
        return None
    gamma, beta = (p.numpy().astype(np.float64) for p in params)
    if not relu:
        return producer, beta
    sigma = np.maximum(np.abs(gamma), 1e-12)
    t = beta / sigma
    cdf = 0.5 * (1 + np.vectorize(erf)(t / sqrt(2)))
    pdf = np.exp(-t * t / 2) / sqrt(2 * pi)
    return producer, beta * cdf + sigma * pdf
