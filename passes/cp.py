"""CP decomposition (Lebedev et al. 2015): 1x1 -> kx1 depthwise -> 1xk depthwise -> 1x1.

``W[o, i, y, x] ~ sum_r A[o, r] B[i, r] C[y, r] D[x, r]`` by alternating least squares. The
first 1x1 conv has weight ``B^T``, the depthwise convs carry ``C`` (vertical stride and pads)
and ``D`` (horizontal), and the last 1x1 conv has weight ``A`` and the bias.

CP-ALS can diverge or stall (degenerate components). Every sweep is checked, and a layer
whose error goes non-finite or grows is declined with the reason rather than kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from lightir.lowrank.driver import LowRankMethod, LowRankOptions, LowRankPass, spatial_conv_layer
from lightir.lowrank.factor import ConvStep, Factorization, cp_factors
from lightir.pass_base import Contract
from lightir.registry import register_pass

SEARCH_SWEEPS = 20


@dataclass(frozen=True)
class CpOptions(LowRankOptions):
    """Rank policy plus ALS sweeps."""

    sweeps: int = 100


class CpMethod(LowRankMethod):
    """CP into four convolutions."""

    name = "cp"

    def __init__(self, sweeps: int) -> None:
        self.sweeps = sweeps
        self.cache: dict = {}

    def layer(self, node: ir.Node):
        return spatial_conv_layer(node)

    def forget(self) -> None:
        super().forget()
        self.cache.clear()

    def full_rank(self, layer) -> int:
        cout, cin, kh, kw = layer.weight.shape
        # Beyond this rank the chain has more weights than the layer: never worth trying.
        cheaper = (cout * cin * kh * kw) // (cout + cin + kh + kw)
        return max(1, min(cout * cin, cin * kh * kw, cout * kh * kw, cheaper))

    def budget_ranks(self, grid: list[int]) -> list[int]:
        """At most 8 ranks, spread over the grid: each costs a full ALS run."""
        if len(grid) <= 8:
            return grid
        picks = np.unique(np.round(np.geomspace(1, len(grid), 8)).astype(int) - 1)
        return [grid[i] for i in picks]

    def estimate(self, layer, rank: int) -> Factorization:
        """A 20-sweep fit for the budget search; the chosen ranks get the full fit.

        On zoo:resnet's layers the 20-sweep error is within about 1% of the 100-sweep one,
        and a full fit costs up to seconds per rank on a 128-channel layer.
        """
        return self._factorization(layer, rank, min(self.sweeps, SEARCH_SWEEPS))

    def factorize(self, layer, rank: int) -> Factorization:
        return self._factorization(layer, rank, self.sweeps)

    def _factorization(self, layer, rank: int, sweeps: int) -> Factorization:
        key = (id(layer.node), rank, sweeps)
        if key not in self.cache:
            self.cache[key] = cp_factors(layer.weight, rank, sweeps)
        (a, b, c, d), error = self.cache[key]
        (sh, sw), (top, left, bottom, right) = layer.geometry["strides"], layer.geometry["pads"]
        steps = [
            ConvStep(b.T[:, :, None, None], 1),
            ConvStep(c.T[:, None, :, None], rank, (sh, 1), (top, 0, bottom, 0)),
            ConvStep(d.T[:, None, None, :], rank, (1, sw), (0, left, 0, right)),
            ConvStep(a[:, :, None, None], 1, bias=layer.bias),
        ]
        dense = np.einsum("or,ir,yr,xr->oiyx", a, b, c, d, optimize=True)
        return Factorization(steps, error, rank, extra={"dense": dense, "tag": "cp"})


@register_pass("cp", contract=Contract.lossy(min_cosine=0.9))
class Cp(LowRankPass):
    """CP: 1x1 -> kx1 depthwise -> 1xk depthwise -> 1x1, with a divergence guard."""

    Options = CpOptions
    # No strength search: CP's energy policy fits ALS at every rank, once per trial (minutes
    # on the fuzzer's graphs); cp keeps its energy 0.9 default, or takes rank / target-macs.
    strength = None

    def method(self) -> LowRankMethod:
        """The factorization."""
        return CpMethod(self.options.sweeps)
