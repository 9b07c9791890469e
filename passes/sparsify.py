"""Unstructured magnitude pruning: zero the smallest weights of Conv, Gemm and MatMul layers.

``ratio=R`` zeroes a fraction R of the weights, either of each layer (``scope=layer``) or of
all of them ranked together by magnitude (``scope=global``). Biases and layers with fewer
than ``min-size`` weights are left alone.

What it buys is storage, not speed. The zeros compress: the pass reports the weight bytes
before and after zlib compression, which is what a zip of the model, or an entropy coder,
achieves. onnxruntime's dense kernels do the same number of multiply-adds on zeros, so
latency does not change. Structured pruning (``prune``) is the pass that makes models faster.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.registry import register_pass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Options of sparsify."""

    ratio: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    min_size: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")


def compressed_size(arrays: list[np.ndarray]) -> int:
    """Bytes of the arrays after zlib (level 6) compression."""
    return sum(len(zlib.compress(np.ascontiguousarray(a).tobytes(), 6)) for a in arrays)


@register_pass("sparsify", contract=Contract.lossy(min_cosine=0.9))
class Sparsify(Pass):
    """Zero the smallest weights (storage gain only: dense runtimes gain no speed)."""

    Options = Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Zero weights by magnitude and report dense and compressed sizes."""
        weights = []
        for graph in model.graphs():
            for node in graph:
                if node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
                    continue
                value = node.inputs[1] if len(node.inputs) > 1 else None
                if value is None or value.const_value is None or value.is_graph_input():
                    continue
                if value.const_value.size < self.options.min_size:
                    continue
                if value.const_value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
                    continue
                if value not in [w for w, _ in weights]:
                    weights.append((value, value.const_value.numpy()))
        if not weights or self.options.ratio == 0:
            return PassResult(model, modified=False)
        before = compressed_size([a for _, a in weights])
        if self.options.scope == "global":
            magnitudes = np.concatenate([np.abs(a).ravel() for _, a in weights])
            threshold = np.quantile(magnitudes, self.options.ratio)
            thresholds = [threshold] * len(weights)
        else:
            thresholds = [np.quantile(np.abs(a), self.options.ratio) for _, a in weights]
        zeroed = total = 0
        new_arrays = []
        for (value, array), threshold in zip(weights, thresholds):
            sparse = np.where(np.abs(array) <= threshold, 0, array).astype(array.dtype)
            zeroed += int((sparse == 0).sum())
            total += sparse.size
            value.const_value = ir.tensor(sparse, name=value.name)
            new_arrays.append(sparse)
        after = compressed_size(new_arrays)
        stats = {
            "sparsity": round(zeroed / total, 4),
            "weight_bytes": int(sum(a.nbytes for a in new_arrays)),
            "compressed_bytes_before": before,
            "compressed_bytes_after": after,
            "compression_gain": round(before / after, 3),
            "speedup": "none on dense runtimes",
        }
        logger.info("sparsify: %s", stats)
        return PassResult(model, modified=zeroed > 0, stats=stats)
