"""Activation range calibration with streamed histograms (memory does not grow with the data).

Each observed tensor keeps its running min and max and a fixed-size histogram of ``|x|`` (or of
``x`` for tensors that are never negative). When a batch exceeds the histogram's range, the
bins are merged pairwise and the range doubles, so memory is ``BINS`` counts per tensor, however
many batches are seen. Ranges are then chosen by:

* ``minmax``: the observed min and max;
* ``percentile``: the 99.99th percentile of ``|x|`` (``percentile=P`` to change it);
* ``entropy``: the threshold whose quantized distribution has the least KL divergence from the
  observed one (TensorRT's calibration);
* ``mse``: the threshold with the least expected squared quantization error, clipping
  included, computed from the histogram.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np

logger = logging.getLogger(__name__)

BINS = 2048


class TensorHistogram:
    """Running statistics of one tensor."""

    def __init__(self) -> None:
        self.minimum = np.inf
        self.maximum = -np.inf
        self.limit = 0.0
        self.counts = np.zeros(BINS, np.int64)

    def update(self, array: np.ndarray) -> None:
        """Add a batch of values."""
        values = np.abs(np.asarray(array, np.float32).ravel())
        self.minimum = min(self.minimum, float(np.min(array)))
        self.maximum = max(self.maximum, float(np.max(array)))
        peak = float(values.max()) if values.size else 0.0
        if self.limit == 0.0:
            self.limit = peak or 1e-8
        while peak > self.limit:
            # Merge bins pairwise: the histogram now covers twice the range.
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([self.counts, np.zeros(BINS // 2, np.int64)])
            self.limit *= 2
        hist, _ = np.histogram(values, bins=BINS, range=(0.0, self.limit))
        self.counts += hist

    @property
    def edges(self) -> np.ndarray:
        """Upper edge of every bin."""
        return np.linspace(0.0, self.limit, BINS + 1)[1:]

    def threshold(self, method: str, levels: int = 128, percentile: float = 99.99) -> float:
        """The clipping threshold on ``|x|`` chosen by ``method``."""
        total = int(self.counts.sum())
        if total == 0:
            return 0.0
        if method == "minmax":
            return max(abs(self.minimum), abs(self.maximum))
        if method == "percentile":
            cumulative = np.cumsum(self.counts) / total
            index = int(np.searchsorted(cumulative, percentile / 100.0))
            return float(self.edges[min(index, BINS - 1)])
        if method == "entropy":
            return self._entropy_threshold(levels)
        if method == "mse":
            return self._mse_threshold(levels)
        raise ValueError(f"unknown calibration method {method!r}")

    def _mse_threshold(self, levels: int) -> float:
        centers = self.edges - self.limit / BINS / 2
        weights = self.counts / self.counts.sum()
        best, best_error = self.limit, np.inf
        for index in range(BINS // 16, BINS + 1, max(1, BINS // 256)):
            threshold = self.edges[index - 1]
            step = threshold / (levels - 1)
            inside = centers <= threshold
            error = np.sum(weights[inside] * step**2 / 12.0)
            error += np.sum(weights[~inside] * (centers[~inside] - threshold) ** 2)
            if error < best_error:
                best, best_error = threshold, error
        return float(best)

    def _entropy_threshold(self, levels: int) -> float:
        counts = self.counts.astype(np.float64)
        best, best_divergence = self.limit, np.inf
        for index in range(levels, BINS + 1, max(1, BINS // 128)):
            reference = counts[:index].copy()
            reference[-1] += counts[index:].sum()  # clipped mass goes to the last bin
            if reference.sum() == 0:
                continue
            chunks = np.array_split(counts[:index], levels)
            quantized = np.concatenate(
                [
                    np.where(chunk > 0, chunk.sum() / max(1, np.count_nonzero(chunk)), 0.0)
                    for chunk in chunks
                ]
            )
            p = reference / reference.sum()
            q = quantized / max(quantized.sum(), 1e-12)
            mask = p > 0
            divergence = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
            if divergence < best_divergence:
                best, best_divergence = self.edges[index - 1], divergence
        return float(best)


class Calibrator:
    """Histograms for a set of tensors, fed batch by batch."""

    def __init__(self, names: Iterable[str]) -> None:
        self.histograms = {name: TensorHistogram() for name in names}

    def update(self, values: Mapping[str, np.ndarray]) -> None:
        """Add one batch of values (unknown names are ignored)."""
        for name, array in values.items():
            if name in self.histograms:
                self.histograms[name].update(array)

    def ranges(self, method: str) -> dict[str, tuple[float, float]]:
        """``(low, high)`` per tensor, containing 0, each side clipped at the threshold."""
        result = {}
        for name, hist in self.histograms.items():
            if method == "minmax":
                result[name] = (min(0.0, hist.minimum), max(0.0, hist.maximum))
                continue
            threshold = hist.threshold(method)
            low = min(0.0, max(hist.minimum, -threshold))
            high = max(0.0, min(hist.maximum, threshold))
            result[name] = (low, high)
        return result
