"""Sensitivity probes from cached activations: run only the graph after the changed layer.

A probe changes one unit (a channel group, a factorized layer) and needs the model's
outputs on the probe samples. Everything computed before the first node the unit touches
is the original model's: those values are captured once, and each probe runs only the
*suffix* of its model, from that cut, fed with them. The values a cut needs are those
computed before it and read after it (a residual's skip crosses too).

The cache is bounded (``CACHE_BYTES``, counted from inferred shapes before any run): the
cuts whose values fit are captured in one run of the original model, in the order the
probes will ask for them; a probe past the budget runs its whole model as before. The first
probe of each kind (prune, low-rank) served from the cache is also run whole and compared: a
mismatch, or a suffix onnxruntime refuses, turns the cache off for the search.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from lightir.analysis.cost import inferred_shapes
from lightir.ir_util import clone_model, crossing, cut_graph
from lightir.onnx_bridge import OrtModel, capture

logger = logging.getLogger(__name__)

CACHE_BYTES = 128 * 2**20  # ResNet-50's search must stay under 1 GB (tools/README.md)
CHECK_TOLERANCE = 1e-4  # relative: the suffix computes the same float ops as the whole model


class Suffixes:
    """Cached cut values of ``model`` on ``batches``, and suffix runs of probe models."""

    def __init__(self, model: ir.Model, batches: list[dict[str, np.ndarray]]) -> None:
        self.model, self.batches = model, batches
        self.position = {node.name: i for i, node in enumerate(model.graph)}
        self.rows = sum(len(next(iter(b.values()))) for b in batches)
        self.cached: dict[str, np.ndarray] = {}
        self.cuts: dict[int, list[str]] = {}  # cut position -> the values it needs
        self.enabled = True
        self.checked: set[str] = set()
        self.served = 0

    def cut_of(self, names: Sequence[str]) -> int | None:
        """The position of the first of these nodes (None when one is not in the model)."""
        positions = [self.position.get(name) for name in names]
        if not positions or any(p is None for p in positions):
            return None
        return min(positions)

    def crossing(self, cut: int) -> list[str]:
        """Values computed before node ``cut`` (graph inputs included) and read from it on."""
        return crossing(self.model, cut)

    def prepare(self, cuts: Sequence[int]) -> None:
        """Capture, in one run, the values of as many ``cuts`` (in order) as fit the budget."""
        if not cuts or not self.batches:
            return
        sample = {k: v.shape for k, v in self.batches[0].items()}
        shapes = inferred_shapes(self.model, sample)
        per_row = len(next(iter(self.batches[0].values())))
        dtypes = {v.name: v.dtype for n in self.model.graph for v in n.outputs}
        dtypes.update({v.name: v.dtype for v in self.model.graph.inputs})

        def nbytes(name: str) -> float:
            shape = shapes.get(name)
            if shape is None or any(not isinstance(d, int) for d in shape):
                return math.inf
            itemsize = dtypes[name].itemsize if dtypes.get(name) is not None else 4
            return math.prod(shape) * itemsize * self.rows / max(per_row, 1)

        wanted: list[str] = []
        total = 0.0
        for cut in dict.fromkeys(cuts):
            names = self.crossing(cut)
            extra = [n for n in names if n not in wanted]
            size = sum(nbytes(n) for n in extra)
            if total + size > CACHE_BYTES:
                continue
            wanted.extend(extra)
            total += size
            self.cuts[cut] = names
        if wanted:
            self.cached = capture(self.model, wanted, self.batches)
            logger.info(
                "compress: %d values (%.0f MB) cached for %d probe cuts",
                len(wanted),
                total / 2**20,
                len(self.cuts),
            )

    def outputs(
        self, probe: ir.Model, touched: Sequence[str], kind: str = ""
    ) -> dict[str, np.ndarray] | None:
        """The probe model's outputs from its suffix, or None (run it whole).

        The first probe of each ``kind`` is also run whole and compared.
        """
        if not self.enabled:
            return None
        cut = self.cut_of(touched)
        names = self.cuts.get(cut) if cut is not None else None
        if not names or cut == 0:
            return None
        suffix = cut_graph(clone_model(probe), names)
        if suffix is None:
            return None
        fed = [v.name for v in suffix.graph.inputs]
        feeds = []
        start = 0
        for batch in self.batches:
            rows = len(next(iter(batch.values())))
            feeds.append({n: self.cached[n][start : start + rows] for n in fed})
            start += rows
        try:
            outputs = OrtModel(suffix).run_rows(feeds)
        except Exception as exc:  # noqa: BLE001 - a suffix onnxruntime refuses: run whole
            logger.warning("compress: a probe's suffix did not run (%s); probing whole", exc)
            self.enabled = False
            return None
        self.served += 1
        if kind not in self.checked:
            self.checked.add(kind)
            whole = OrtModel(probe).run_rows(self.batches)
            for name, ref in whole.items():
                scale = max(float(np.abs(ref).max()), 1e-12)
                if float(np.abs(outputs[name] - ref).max()) > CHECK_TOLERANCE * scale:
                    logger.warning(
                        "compress: a probe's suffix run differs from its whole run on '%s'; "
                        "probing whole models",
                        name,
                    )
                    self.enabled = False
                    return whole
        return outputs
