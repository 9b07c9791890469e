"""Data-free activation statistics read off a BatchNormalization's parameters."""

from __future__ import annotations

from math import erf, pi, sqrt

import numpy as np
import onnx_ir as ir

# Node meta key: the (gamma, beta) of the BatchNormalization folded into this node
# (fold-bn sets it), so its statistics outlive the fold.
FOLDED_BN = "lightir.folded_bn"


def bn_output_means(value: ir.Value) -> tuple[ir.Node, np.ndarray] | None:
    """The BN producing ``value`` (through an optional Relu) and ``E[value]`` per channel.

    Assumes the BN normalizes to ``z ~ N(0, 1)``: ``E[gamma z + beta] = beta``, and after a
    Relu, the rectified-normal mean ``beta Phi(t) + |gamma| phi(t)`` with ``t = beta / |gamma|``.
    A layer fold-bn folded a BN into counts as that BN (:data:`FOLDED_BN`): ``int8``'s bias
    correction runs after fold-bn and, without data, has only these statistics.
    """
    producer = value.producer()
    relu = False
    if producer is not None and producer.op_type == "Relu":
        relu, producer = True, producer.inputs[0].producer()
    if producer is None:
        return None
    if producer.op_type == "BatchNormalization":
        params = [v.const_value for v in producer.inputs[1:3]]
        if any(p is None for p in params):
            return None
        gamma, beta = (p.numpy().astype(np.float64) for p in params)
    elif FOLDED_BN in producer.meta:
        gamma, beta = (np.asarray(p, np.float64) for p in producer.meta[FOLDED_BN])
    else:
        return None
    if not relu:
        return producer, beta
    sigma = np.maximum(np.abs(gamma), 1e-12)
    t = beta / sigma
    cdf = 0.5 * (1 + np.vectorize(erf)(t / sqrt(2)))
    pdf = np.exp(-t * t / 2) / sqrt(2 * pi)
    return producer, beta * cdf + sigma * pdf
