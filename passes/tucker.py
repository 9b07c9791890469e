"""Tucker-2 (Kim et al. 2016): 1x1 reduce -> kxk core -> 1x1 expand.

The channel modes of ``W (out, in, kh, kw)`` are factorized, ``W ~ core x0 U_out x1 U_in``,
starting from the HOSVD (leading singular vectors of each unfolding), then ``sweeps`` HOOI
iterations refine them. The reduce conv has weight ``U_in^T``, the core conv keeps the
original stride and pads, and the expand conv has weight ``U_out`` and the bias. ``rank`` is
used for both modes, scaled by each mode's size when ``in != out``. Energy is applied per mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from lightir.lowrank.driver import (
    LowRankMethod,
    LowRankOptions,
    LowRankPass,
    conv_layer,
    placeholder,
)
from lightir.lowrank.factor import (
    ConvStep,
    Factorization,
    energy_rank,
    mode_bases,
    tucker2_factors,
    unfold,
)
from lightir.pass_base import Contract
from lightir.registry import register_pass


@dataclass(frozen=True)
class TuckerOptions(LowRankOptions):
    """Rank policy plus HOOI sweeps."""

    sweeps: int = 2


class TuckerMethod(LowRankMethod):
    """Tucker-2 on the channel modes."""

    name = "tucker"

    def __init__(self, sweeps: int) -> None:
        self.sweeps = sweeps
        self.bases: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def layer(self, node: ir.Node):
        layer = conv_layer(node)
        if layer is None or layer.weight.shape[2:] == (1, 1):
            return None
        return layer

    def full_rank(self, layer) -> int:
        return max(layer.weight.shape[:2])

    def _ranks(self, layer, rank: int) -> tuple[int, int]:
        cout, cin = layer.weight.shape[:2]
        full = max(cout, cin)
        return max(1, min(cout, round(rank * cout / full))), max(
            1, min(cin, round(rank * cin / full))
        )

    def energy_rank(self, layer, energy: float) -> int:
        w = layer.weight
        out_rank = energy_rank(self.singular_values(layer, unfold(w, 0), "out"), energy)
        in_rank = energy_rank(self.singular_values(layer, unfold(w, 1), "in"), energy)
        cout, cin = w.shape[:2]
        full = max(cout, cin)
        return max(round(out_rank * full / cout), round(in_rank * full / cin))

    def factorize(self, layer, rank: int) -> Factorization:
        rank_out, rank_in = self._ranks(layer, rank)
        key = id(layer.node)
        if key not in self.bases:
            self.bases[key] = mode_bases(layer.weight)
        u_out, core, u_in, error = tucker2_factors(
            layer.weight, rank_out, rank_in, self.sweeps, self.bases[key]
        )
        dense = np.einsum("sryx,os,ir->oiyx", core, u_out, u_in, optimize=True)
        return Factorization(
            _steps(layer, u_out, core, u_in), error, rank, extra={"dense": dense, "tag": "tucker"}
        )

    def shapes(self, layer, rank: int) -> list[ConvStep]:
        rank_out, rank_in = self._ranks(layer, rank)
        cout, cin, kh, kw = layer.weight.shape
        return _steps(
            layer,
            placeholder(cout, rank_out),
            placeholder(rank_out, rank_in, kh, kw),
            placeholder(cin, rank_in),
        )


def _steps(layer, u_out: np.ndarray, core: np.ndarray, u_in: np.ndarray) -> list[ConvStep]:
    """Reduce to ``rank_in`` (1x1), the core with the layer's geometry, expand (1x1)."""
    geometry = layer.geometry
    reduce = ConvStep(u_in.T[:, :, None, None], 1, (1, 1), (0, 0, 0, 0), (1, 1), None)
    middle = ConvStep(core, 1, geometry["strides"], geometry["pads"], geometry["dilations"])
    expand = ConvStep(u_out[:, :, None, None], 1, (1, 1), (0, 0, 0, 0), (1, 1), layer.bias)
    return [reduce, middle, expand]


@register_pass("tucker", contract=Contract.lossy(min_cosine=0.9))
class Tucker(LowRankPass):
    """Tucker-2: 1x1 reduce -> kxk core -> 1x1 expand (HOSVD + HOOI)."""

    Options = TuckerOptions

    def method(self) -> LowRankMethod:
        """The factorization."""
        return TuckerMethod(self.options.sweeps)
