"""Low-rank factorizations of one layer's weights (the arithmetic; :mod:`.driver` applies them).

Decompositions (numpy only; each is a few SVDs or a short ALS loop, so tensorly, which would
bring a backend system for the same arithmetic, is not needed):

* :func:`svd_factors`: ``W (out x in) ~ U_r S_r V_r^T`` for Gemm / MatMul / 1x1 Conv.
* :func:`spatial_factors`: Jaderberg's scheme 2, ``W[o,i,y,x] ~ sum_r V[r,i,y] H[o,r,x]``, a
  kx1 conv with r channels followed by a 1xk conv.
* :func:`tucker2_factors`: Tucker-2 on the channel modes (HOSVD start, optional HOOI sweeps),
  a 1x1 reduce, a kxk core and a 1x1 expand.
* :func:`cp_factors`: CP by alternating least squares, a 1x1 conv, a kx1 depthwise, a 1xk
  depthwise and a 1x1 conv. CP-ALS can diverge or stall, so every sweep is checked and a
  non-finite or growing error raises :class:`Unstable`.

Each returns a :class:`Factorization`: the chain of convolutions (weights, biases, geometry)
that replaces the layer, its relative weight error, and its parameters and MACs per output
position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


class Unstable(Exception):
    """The decomposition did not converge to a usable approximation."""


@dataclass
class ConvStep:
    """One convolution of a replacement chain."""

    weight: np.ndarray  # (C_out, C_in / group, kh, kw)
    group: int = 1
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    bias: np.ndarray | None = None


@dataclass
class Factorization:
    """A replacement chain and what it costs."""

    steps: list[ConvStep]
    error: float  # ||W - W_r||_F / ||W||_F
    rank: int
    extra: dict = field(default_factory=dict)

    def dense(self) -> np.ndarray:
        """The approximated weight: ``extra["dense"]``, or built by ``extra["make_dense"]``.

        A budget search builds dozens of factorizations and never looks at their product (a
        ``8210 x 1536`` product per rank of ddddocr's classifier took minutes), so methods may
        defer it.
        """
        if "dense" not in self.extra:
            self.extra["dense"] = self.extra.pop("make_dense")()
        return self.extra["dense"]


def relative_error(original: np.ndarray, approx: np.ndarray) -> float:
    """Frobenius norm of the difference, relative to the original's."""
    norm = np.linalg.norm(original)
    return float(np.linalg.norm(original - approx) / norm) if norm else 0.0


def energy_rank(singular: np.ndarray, energy: float) -> int:
    """Smallest rank whose singular values hold ``energy`` of the squared sum."""
    cumulative = np.cumsum(singular**2) / max(float(np.sum(singular**2)), 1e-30)
    return int(np.searchsorted(cumulative, energy - 1e-12) + 1)


def truncation_error(singular: np.ndarray, rank: int) -> float:
    """Relative Frobenius error of keeping the first ``rank`` singular values (Eckart-Young)."""
    total = float(np.sum(singular**2))
    return float(np.sqrt(np.sum(singular[rank:] ** 2) / total)) if total > 0 else 0.0


def svd_factors(
    matrix: np.ndarray, rank: int, decomposition: tuple | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """``matrix (out x in) ~ left (out x r) @ right (r x in)``; returns left, right, error.

    ``decomposition`` is ``np.linalg.svd(matrix)`` when the caller has it: a budget search
    tries dozens of ranks of one matrix, and one SVD serves them all. The error is then read
    off the singular values (Eckart-Young), not from a product.
    """
    if decomposition is None:
        decomposition = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    u, s, vt = decomposition
    root = np.sqrt(s[:rank])
    left, right = u[:, :rank] * root, root[:, None] * vt[:rank]
    return left, right, truncation_error(s, rank)


def spatial_matrix(weight: np.ndarray) -> np.ndarray:
    """The ``(cin * kh) x (cout * kw)`` matrix whose SVD splits a kxk kernel."""
    cout, cin, kh, kw = weight.shape
    return weight.astype(np.float64).transpose(1, 2, 0, 3).reshape(cin * kh, cout * kw)


def spatial_factors(
    weight: np.ndarray, rank: int, decomposition: tuple | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Split a kxk kernel into kx1 (``rank`` outputs) and 1xk; returns both weights, error.

    ``decomposition`` is the SVD of :func:`spatial_matrix` when the caller keeps it; the
    error is read off the singular values (the split is exactly a rank-``rank`` SVD of it).
    """
    cout, cin, kh, kw = weight.shape
    if decomposition is None:
        decomposition = np.linalg.svd(spatial_matrix(weight), full_matrices=False)
    u, s, vt = decomposition
    root = np.sqrt(s[:rank])
    vertical = (u[:, :rank] * root).T.reshape(rank, cin, kh, 1)
    horizontal = (root[:, None] * vt[:rank]).reshape(rank, cout, kw).transpose(1, 0, 2)
    horizontal = horizontal.reshape(cout, rank, 1, kw)
    return vertical, horizontal, truncation_error(s, rank)


def unfold(tensor: np.ndarray, mode: int) -> np.ndarray:
    """The mode-``mode`` unfolding: that axis first, the rest flattened."""
    return np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)


def mode_bases(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors of the output- and input-channel unfoldings (HOSVD bases)."""
    w = weight.astype(np.float64)
    return (
        np.linalg.svd(unfold(w, 0), full_matrices=False)[0],
        np.linalg.svd(unfold(w, 1), full_matrices=False)[0],
    )


def tucker2_factors(
    weight: np.ndarray,
    rank_out: int,
    rank_in: int,
    sweeps: int = 0,
    bases: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Tucker-2 on modes 0 and 1: ``W ~ core x0 U_out x1 U_in`` (HOSVD, then HOOI sweeps).

    ``bases`` are :func:`mode_bases` of the weight, computed once and reused across ranks.
    """
    w = weight.astype(np.float64)
    full_out, full_in = bases if bases is not None else mode_bases(w)
    u_out, u_in = full_out[:, :rank_out], full_in[:, :rank_in]
    for _ in range(sweeps):
        projected = np.einsum("oiyx,ir->oryx", w, u_in, optimize=True)
        u_out = np.linalg.svd(unfold(projected, 0), full_matrices=False)[0][:, :rank_out]
        projected = np.einsum("oiyx,os->siyx", w, u_out, optimize=True)
        u_in = np.linalg.svd(unfold(projected, 1), full_matrices=False)[0][:, :rank_in]
    core = np.einsum("oiyx,os,ir->sryx", w, u_out, u_in, optimize=True)
    approx = np.einsum("sryx,os,ir->oiyx", core, u_out, u_in, optimize=True)
    return u_out, core, u_in, relative_error(w, approx)


def cp_factors(
    weight: np.ndarray, rank: int, sweeps: int = 60, seed: int = 0
) -> tuple[list[np.ndarray], float]:
    """CP of a 4-way weight by ALS: factors A (out x R), B (in x R), C (kh x R), D (kw x R).

    Raises :class:`Unstable` when an ALS sweep yields non-finite values or the error grows
    by more than 10% from its best, the usual signs of CP-ALS degeneracy.
    """
    w = weight.astype(np.float64)
    if not np.isfinite(w).all():
        raise Unstable("the weight has NaN or Inf values")
    rng = np.random.default_rng(seed)
    factors = []
    for mode in range(4):  # SVD start where the mode is large enough, random otherwise
        u, s, _ = np.linalg.svd(unfold(w, mode), full_matrices=False)
        start = u[:, : min(rank, u.shape[1])] * s[: min(rank, u.shape[1])]
        if start.shape[1] < rank:
            start = np.concatenate(
                [start, rng.standard_normal((w.shape[mode], rank - start.shape[1])) * 1e-2], 1
            )
        factors.append(start)
    norm = np.linalg.norm(w)
    best = math.inf
    letters = "oiyx"
    for _ in range(sweeps):
        for mode in range(4):
            others = [factors[m] for m in range(4) if m != mode]
            gram = np.ones((rank, rank))
            for f in others:
                gram *= f.T @ f
            subs = ",".join(f"{letters[m]}r" for m in range(4) if m != mode)
            mttkrp = np.einsum(f"oiyx,{subs}->{letters[mode]}r", w, *others, optimize=True)
            ridge = 1e-12 * float(np.trace(gram)) / rank
            factors[mode] = np.linalg.solve(gram + ridge * np.eye(rank), mttkrp.T).T
        approx = np.einsum("or,ir,yr,xr->oiyx", *factors, optimize=True)
        error = float(np.linalg.norm(w - approx) / norm) if norm else 0.0
        # Degenerate CP: components grow without bound while cancelling each other.
        weights = np.prod([np.linalg.norm(f, axis=0) for f in factors], axis=0)
        if norm and float(weights.max()) > 1e4 * norm:
            raise Unstable(
                f"CP-ALS components diverge (norm {float(weights.max()):.3g} for a weight of "
                f"norm {norm:.3g}): the rank is degenerate for this kernel"
            )
        if not np.isfinite(error) or (error > 1e-3 and error > best * 1.1):
            raise Unstable(f"CP-ALS diverged (error {error:.3g} after best {best:.3g})")
        if best - error < 1e-13 * max(best, 1e-30) and error < 1e-9:
            best = error
            break
        best = min(best, error)
    if not np.isfinite(best):
        raise Unstable("CP-ALS produced non-finite factors")
    return factors, best


# ----------------------------------------------------------------------------------- passes
def out_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int = 1) -> int:
    """Output length of a convolution along one axis."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def chain_macs(steps: list[ConvStep], height: int, width: int) -> int:
    """MACs of a chain of convolutions on one (height x width) input."""
    total = 0
    for step in steps:
        kh, kw = step.weight.shape[2:]
        height = out_size(
            height, kh, step.strides[0], step.pads[0] + step.pads[2], step.dilations[0]
        )
        width = out_size(width, kw, step.strides[1], step.pads[1] + step.pads[3], step.dilations[1])
        total += height * width * int(np.prod(step.weight.shape))
    return total


def chain_params(steps: list[ConvStep]) -> int:
    """Weights and biases of a chain."""
    return sum(s.weight.size + (0 if s.bias is None else s.bias.size) for s in steps)
