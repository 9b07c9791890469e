"""k-means weight sharing (Deep Compression, stage 2), expressed in valid ONNX.

Each Conv / Gemm / MatMul weight of at least ``min-size`` elements is replaced by a codebook of
``2**bits`` float values and one code per weight. The codes are uint8 in the file and decoded
by ``Cast -> Gather -> Reshape``, which onnxruntime constant-folds at session start. Centroids
start linearly spaced between the weight's min and max (the initialization Deep Compression
found best), then Lloyd iterations refine them. Exact zeros, for example from ``sparsify``,
keep a centroid of their own at exactly 0, so ``sparsify,share-weights`` (or
``prune,share-weights``) reproduces the Deep Compression pipeline without retraining.

Reported sizes of the shared weights: the dense float32 bytes; the bytes in the ONNX file
(uint8 codes plus codebooks); the bytes with codes packed at ``bits`` per weight; and the bytes
under an ideal entropy coder (the Huffman stage), each with its compression factor.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.quant.codes import entropy_bytes, gathered_weight
from lightir.registry import register_pass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Options of share-weights."""

    bits: int = 4
    min_size: int = 256
    iterations: int = 25

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be in [1, 8], got {self.bits}")


def kmeans_1d(values: np.ndarray, clusters: int, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids and labels of a 1-D k-means with linear initialization."""
    low, high = float(values.min()), float(values.max())
    centroids = np.linspace(low, high, clusters) if clusters > 1 else np.array([values.mean()])
    labels = np.zeros(values.shape, np.int64)
    for _ in range(iterations):
        edges = (centroids[1:] + centroids[:-1]) / 2
        labels = np.searchsorted(edges, values)
        sums = np.bincount(labels, weights=values, minlength=clusters)
        counts = np.bincount(labels, minlength=clusters)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        order = np.argsort(updated)
        updated = updated[order]
        if np.allclose(updated, centroids):
            break
        centroids = updated
        edges = (centroids[1:] + centroids[:-1]) / 2
        labels = np.searchsorted(edges, values)
    return centroids, labels


@register_pass("share-weights", contract=Contract.lossy(min_cosine=0.9))
class ShareWeights(Pass):
    """k-means weight sharing: a codebook and uint8 codes per layer (Deep Compression)."""

    Options = Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Cluster each large weight and report dense, file, packed and entropy-coded bytes."""
        clusters = 2**self.options.bits
        dense = file_bytes = packed = coded = layers = 0
        for node in list(model.graph):
            if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
                continue
            value = node.inputs[1]
            if value.const_value is None or value.is_graph_input():
                continue
            if (
                value.const_value.dtype != ir.DataType.FLOAT
                or value.const_value.size < self.options.min_size
            ):
                continue
            if any(user is not node for user, _ in value.uses()):
                context.decline(node, f"weight '{value.name}' is shared")
                continue
            weight = value.const_value.numpy()
            flat = weight.ravel().astype(np.float64)
            zeros = flat == 0
            if zeros.any() and not zeros.all():
                centroids, labels = kmeans_1d(flat[~zeros], clusters - 1, self.options.iterations)
                codebook = np.concatenate([[0.0], centroids])
                full = np.zeros(flat.shape, np.int64)
                full[~zeros] = labels + 1
                labels = full
            else:
                codebook, labels = kmeans_1d(flat, clusters, self.options.iterations)
            gathered_weight(node, 1, codebook, labels.reshape(weight.shape))
            layers += 1
            dense += weight.nbytes
            file_bytes += labels.size + codebook.size * 4
            packed += math.ceil(labels.size * self.options.bits / 8) + codebook.size * 4
            coded += entropy_bytes(labels) + codebook.size * 4
        if not layers:
            return PassResult(model, modified=False)
        stats = {
            "layers": layers,
            "dense_bytes": dense,
            "onnx_bytes": file_bytes,
            "packed_bytes": packed,
            "entropy_coded_bytes": coded,
            "compression_onnx": round(dense / file_bytes, 2),
            "compression_packed": round(dense / packed, 2),
            "compression_entropy_coded": round(dense / coded, 2),
        }
        logger.info("share-weights: %s", stats)
        common_passes.RemoveUnusedNodesPass()(model)  # the float weights that were replaced
        return PassResult(model, modified=True, stats=stats)
