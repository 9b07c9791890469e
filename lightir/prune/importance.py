"""How much each channel (component) of a group matters: the scores ``prune`` ranks by.

* ``l1`` / ``l2``: the mean absolute / root-mean-square of the producing weight rows;
* ``bn-gamma``: ``|gamma|`` of the BatchNormalization that scales the channel;
* ``activation`` / ``entropy``: mean ``|x|`` / the entropy of the pooled activation on the
  calibration data;
* ``output-error``: a greedy removal order by the output error each removal leaves in the
  consuming layers (:class:`lightir.analysis.reconstruct.RemovalCost`); lower scores go first.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from lightir import memory, progress
from lightir.analysis.channels import ChannelGroup
from lightir.analysis.reconstruct import (
    SELECTION_ROWS,
    Moments,
    RemovalCost,
    layer_matrix,
    layer_rows,
    removal_order,
)
from lightir.io import tensor_bytes
from lightir.onnx_bridge import capture

logger = logging.getLogger(__name__)

DATA_CRITERIA = ("activation", "entropy", "output-error")  # they need calibration data
MAX_SELECTION_COLUMNS = 4608  # a 512-channel 3x3 conv; wider consumers fall back to l1
CAPTURE_BYTES = 128 << 20  # activations held at once while the moments are taken
# Second moments held at once (float64, columns x columns per consumer). All of ResNet-50's
# together are about 1 GB (a 512-channel 3x3 conv alone: 4608^2 x 8 = 170 MB).
MOMENT_BYTES = 128 << 20


def _columns(node: ir.Node) -> int:
    """Columns of a consumer's rows (:func:`layer_rows`): a Conv's patch, a Gemm's features."""
    weight = node.inputs[1].const_value
    if node.op_type == "Conv":
        return weight.size // weight.shape[0]
    trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    return weight.shape[1 if trans_b else 0]


def weight_rows(node: ir.Node, index: int) -> np.ndarray:
    """The weights that produce output channel ``index`` of ``node``."""
    weight = node.inputs[1].const_value.numpy()
    if node.op_type == "Conv":
        return weight[index].ravel()
    if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
        return weight[index]
    return weight[:, index]


class ChannelScorer:
    """Scores the components of channel groups of one model (read-only on the model).

    ``batches`` are the calibration batches (None without data); ``refit`` says whether the
    consumers will be refit, which changes what an output-error removal costs.
    """

    def __init__(self, model: ir.Model, batches: list[dict] | None, refit: bool) -> None:
        self.model, self.batches, self.refit = model, batches, refit
        self.moments: dict[ir.Node, tuple[Moments, int]] = {}
        self.weight_bytes = tensor_bytes(model)

    def scores(self, group: ChannelGroup, criterion: str, limit: int | None = None) -> np.ndarray:
        """One score per component of ``group``; the lowest go first.

        ``auto`` is ``output-error`` with data and ``l1`` without; ``output-error`` falls back
        to ``l1`` for a group whose consumers cannot be costed. ``limit``: the removals that
        will be taken (an output-error order needs no more).
        """
        if criterion == "auto":
            criterion = "l1" if self.batches is None else "output-error"
        if criterion == "output-error":
            scores = self._output_error(group, limit)
            if scores is not None:
                return scores
            criterion = "l1"
        if criterion in DATA_CRITERIA:
            return self._data(group, criterion)
        scores = np.zeros(group.size)
        for i, component in enumerate(group.components):
            if criterion == "bn-gamma":
                gammas = [
                    abs(float(s.value.const_value.numpy()[s.index]))
                    for s in component.slices
                    if s.value.uses()
                    and s.value.uses()[0][0].op_type == "BatchNormalization"
                    and s.value.uses()[0][1] == 1
                ]
                if gammas:
                    scores[i] = sum(gammas)
                    continue
            for node, index in component.producers:
                rows = weight_rows(node, index)
                scores[i] += (
                    float(np.sqrt(np.mean(rows**2)))
                    if criterion == "l2"
                    else float(np.abs(rows).mean())
                )
        return scores

    def _data(self, group: ChannelGroup, criterion: str) -> np.ndarray:
        outputs = sorted({node.outputs[0].name for node, _ in group.components[0].producers})
        values = capture(self.model, outputs, self.batches)
        scores = np.zeros(group.size)
        for i, component in enumerate(group.components):
            for node, index in component.producers:
                act = values[node.outputs[0].name][:, index]
                if criterion == "activation":
                    scores[i] += float(np.abs(act).mean())
                else:
                    pooled = act.reshape(act.shape[0], -1).mean(axis=1)
                    hist, _ = np.histogram(pooled, bins=min(32, max(4, len(pooled) // 2)))
                    p = hist[hist > 0] / hist.sum()
                    scores[i] += float(-(p * np.log(p)).sum())
        return scores

    @staticmethod
    def consumers(group: ChannelGroup) -> list[ir.Node] | None:
        """The group's consuming layers, or None when one cannot be costed (see below)."""
        nodes = list(dict.fromkeys(node for c in group.components for node, _ in c.consumers))
        for node in nodes:
            shape = node.inputs[0].shape
            if node.op_type == "Conv" and (shape is None or shape.rank() != 4):
                return None
            if _columns(node) > MAX_SELECTION_COLUMNS:
                return None
        return nodes or None

    def scores_many(
        self, wanted: list[tuple[ChannelGroup, int | None]], criterion: str
    ) -> list[np.ndarray]:
        """:meth:`scores` of many ``(group, limit)`` pairs, in order.

        With ``output-error``, the consumers' moments are taken a chunk of groups at a time
        (about ``MOMENT_BYTES`` of them, one capture run per chunk) and dropped once the
        chunk is scored: holding every consumer's at once took ResNet-50's search to 1.7 GB.
        """
        moments = self.batches is not None and criterion in ("auto", "output-error")
        chunks: list[list[int]] = [[]]
        sizes = [0]  # bytes of each chunk's moments
        for index, (group, _) in enumerate(wanted):
            # Float64 second moments: columns squared per consumer.
            size = sum(8 * _columns(n) ** 2 for n in self.consumers(group) or []) if moments else 0
            if chunks[-1] and sizes[-1] + size > MOMENT_BYTES:
                chunks.append([])
                sizes.append(0)
            chunks[-1].append(index)
            sizes[-1] += size
        scores: list[np.ndarray | None] = [None] * len(wanted)
        with progress.bar(total=len(wanted), desc="prune: ordering channels") as shown:
            for chunk, size in zip(chunks, sizes):
                if moments:
                    self.prepare([wanted[i][0] for i in chunk])
                for i in chunk:
                    scores[i] = self.scores(wanted[i][0], criterion, wanted[i][1])
                    shown.update(1)
                self.moments.clear()
                # Each chunk drops a capture session over the model (an IR clone, full of
                # cycles): worth a collection when the model or the moments are large.
                memory.release(size + self.weight_bytes)
        return scores

    def prepare(self, groups: list[ChannelGroup]) -> None:
        """Row moments of every consumer the groups' output-error scores need.

        Activations are captured a few values at a time (``CAPTURE_BYTES``, sized on one
        sample) and reduced to :class:`Moments` at once, so one run of the model serves many
        groups and no more than a chunk of activations is held.
        """
        by_input: dict[str, list[ir.Node]] = defaultdict(list)
        for group in groups:
            for node in self.consumers(group) or []:
                if node not in self.moments and node not in by_input[node.inputs[0].name]:
                    by_input[node.inputs[0].name].append(node)
        by_input = {name: nodes for name, nodes in by_input.items() if nodes}
        if not by_input:
            return
        first = {name: array[:1] for name, array in self.batches[0].items()}
        probe = capture(self.model, sorted(by_input), [first])
        samples = sum(len(next(iter(batch.values()))) for batch in self.batches)
        chunks: list[list[str]] = [[]]
        held = 0
        for name in sorted(by_input):
            size = probe[name].nbytes * samples
            if chunks[-1] and held + size > CAPTURE_BYTES:
                chunks.append([])
                held = 0
            chunks[-1].append(name)
            held += size
        del probe
        for chunk in chunks:
            values = capture(self.model, chunk, self.batches)
            for name in chunk:
                for node in by_input[name]:
                    rows, per_channel, available = layer_rows(
                        node, values[name], limit=SELECTION_ROWS
                    )
                    self.moments[node] = (Moments.of(rows, available), per_channel)
                    del rows
            del values

    def _output_error(self, group: ChannelGroup, limit: int | None) -> np.ndarray | None:
        """Greedy removal order by the consumers' output error (:class:`RemovalCost`).

        Each step removes the component whose removal adds the least relative output error,
        summed over the group's consuming layers, with the refit or the bias compensation
        accounted for. The score of a component is the error accumulated when it goes, so
        lower scores go first; after ``limit`` removals the rest are ranked by their cost as
        the next one. None (use ``l1``) when a consumer is not a 2-D Conv, Gemm or rank-2
        MatMul, or is wider than ``MAX_SELECTION_COLUMNS`` columns.
        """
        nodes = self.consumers(group)
        if nodes is None:
            logger.info("prune: %s ranked by l1 (consumer not costed)", group.producer_nodes)
            return None
        self.prepare([group])
        columns: dict[ir.Node, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for k, component in enumerate(group.components):
            for node, index in component.consumers:
                columns[node][k].append(index)
        layers = []
        for node in nodes:
            moments, per_channel = self.moments.pop(node)  # RemovalCost consumes them
            blocks = {
                k: np.concatenate([np.arange(c * per_channel, (c + 1) * per_channel) for c in cs])
                for k, cs in columns[node].items()
            }
            layers.append(RemovalCost(moments, layer_matrix(node), blocks, refit=self.refit))
        return removal_order(layers, group.size, limit)
