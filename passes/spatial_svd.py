"""Spatial SVD (Jaderberg et al. 2014, scheme 2): a kxk Conv becomes a kx1 Conv then a 1xk Conv.

``W[o, i, y, x] ~ sum_r V[r, i, y] H[o, r, x]`` from the SVD of W reshaped to
``(in * kh) x (out * kw)``. The kx1 conv keeps the vertical stride and pads, the 1xk conv the
horizontal ones, so the output grid is unchanged. A separable kernel is recovered exactly at
its rank.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from lightir.lowrank.driver import (
    LowRankMethod,
    LowRankPass,
    placeholder,
    spatial_conv_layer,
)
from lightir.lowrank.factor import (
    ConvStep,
    Factorization,
    energy_rank,
    spatial_factors,
    spatial_matrix,
)
from lightir.pass_base import Contract
from lightir.registry import register_pass


class SpatialMethod(LowRankMethod):
    """kxk -> kx1 + 1xk."""

    name = "spatial-svd"

    def layer(self, node: ir.Node):
        return spatial_conv_layer(node)

    def full_rank(self, layer) -> int:
        cout, cin, kh, kw = layer.weight.shape
        return min(cin * kh, cout * kw)

    def energy_rank(self, layer, energy: float) -> int:
        return energy_rank(self.singular_values(layer, spatial_matrix(layer.weight)), energy)

    def factorize(self, layer, rank: int) -> Factorization:
        decomposition = self.decomposition(layer, spatial_matrix(layer.weight))
        vertical, horizontal, error = spatial_factors(layer.weight, rank, decomposition)

        def make_dense():
            return np.einsum(
                "riy,orx->oiyx", vertical[..., 0], horizontal[:, :, 0, :], optimize=True
            )

        return Factorization(
            _steps(layer, vertical, horizontal),
            error,
            rank,
            extra={"make_dense": make_dense, "tag": "ssvd"},
        )

    def shapes(self, layer, rank: int) -> list[ConvStep]:
        cout, cin, kh, kw = layer.weight.shape
        return _steps(layer, placeholder(rank, cin, kh, 1), placeholder(cout, rank, 1, kw))


def _steps(layer, vertical: np.ndarray, horizontal: np.ndarray) -> list[ConvStep]:
    """The kx1 conv with the vertical stride and pads, then the 1xk with the horizontal ones."""
    (sh, sw), (top, left, bottom, right) = layer.geometry["strides"], layer.geometry["pads"]
    first = ConvStep(vertical, 1, (sh, 1), (top, 0, bottom, 0), (1, 1), None)
    second = ConvStep(horizontal, 1, (1, sw), (0, left, 0, right), (1, 1), layer.bias)
    return [first, second]


@register_pass("spatial-svd", contract=Contract.lossy(min_cosine=0.9))
class SpatialSvd(LowRankPass):
    """Spatial SVD: kxk Conv -> kx1 Conv (rank channels) -> 1xk Conv."""

    def method(self) -> LowRankMethod:
        """The factorization."""
        return SpatialMethod()
