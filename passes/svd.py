"""Truncated SVD of Gemm / MatMul weights and 1x1 convolutions: one layer becomes two.

``W (out x in) ~ U_r S_r V_r^T``: a first layer ``in -> r`` (``sqrt(S_r) V_r^T``) and a second
``r -> out`` (``U_r sqrt(S_r)``) carrying the bias. Cheaper when ``r (in + out) < in * out``.
Rank policies, rounding, the MAC budget and the refit are described in
:mod:`lightir.lowrank.driver`.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from lightir.lowrank.driver import (
    LowRankMethod,
    LowRankPass,
    conv_layer,
    dense_layer,
    placeholder,
)
from lightir.lowrank.factor import ConvStep, Factorization, energy_rank, svd_factors
from lightir.pass_base import Contract
from lightir.registry import register_pass


class SvdMethod(LowRankMethod):
    """Two-layer SVD factorization."""

    name = "svd"

    def layer(self, node: ir.Node):
        layer = dense_layer(node)
        if layer is None:
            layer = conv_layer(node)
            if layer is None or layer.weight.shape[2:] != (1, 1):
                return None
        return layer

    def full_rank(self, layer) -> int:
        return min(layer.weight.shape[:2])

    def energy_rank(self, layer, energy: float) -> int:
        return energy_rank(self.singular_values(layer, layer.weight[:, :, 0, 0]), energy)

    def factorize(self, layer, rank: int) -> Factorization:
        matrix = layer.weight[:, :, 0, 0]
        left, right, error = svd_factors(matrix, rank, self.decomposition(layer, matrix))
        return Factorization(
            _steps(layer, right, left),
            error,
            rank,
            extra={"make_dense": lambda: (left @ right)[:, :, None, None], "tag": "svd"},
        )

    def shapes(self, layer, rank: int) -> list[ConvStep]:
        cout, cin = layer.weight.shape[:2]
        return _steps(layer, placeholder(rank, cin), placeholder(cout, rank))


def _steps(layer, right: np.ndarray, left: np.ndarray) -> list[ConvStep]:
    """``right`` (rank x in) as a 1x1 conv with the layer's stride and pads, then ``left``."""
    first = ConvStep(
        right[:, :, None, None], 1, layer.geometry["strides"], layer.geometry["pads"], (1, 1), None
    )
    second = ConvStep(left[:, :, None, None], 1, (1, 1), (0, 0, 0, 0), (1, 1), layer.bias)
    return [first, second]


@register_pass("svd", contract=Contract.lossy(min_cosine=0.9))
class Svd(LowRankPass):
    """Truncated SVD of Gemm / MatMul / 1x1 Conv weights into two thinner layers."""

    def method(self) -> LowRankMethod:
        """The factorization."""
        return SvdMethod()
