"""Latency helpers shared by the benchmarks: onnxruntime sessions set up alike, and medians of
interleaved, shuffled blocks (the machine is shared and noisy: compare side by side)."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping
from os import PathLike

import onnxruntime as ort

from lightir.onnx_bridge import ir


def ort_session(model, threads: int = 1) -> ort.InferenceSession:
    """ORT_ENABLE_ALL, ``threads`` intra-op threads, spinning off (steadier on 2 cores).

    ``model`` is an onnx-ir model or the path of an ONNX file.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = (
        str(model) if isinstance(model, str | PathLike) else ir.to_proto(model).SerializeToString()
    )
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def interleaved_medians(
    runners: Mapping[str, Callable[[dict], object]],
    feeds: dict,
    blocks: int = 21,
    per_block: int | None = 200,
    block_s: float = 0.04,
) -> dict[str, float]:
    """Median seconds per call of each runner, over ``blocks`` shuffled rounds.

    ``per_block=None`` sizes each block to about ``block_s`` seconds of the first runner.
    """
    for run in runners.values():
        run(feeds)
    if per_block is None:
        first = next(iter(runners.values()))
        start = time.perf_counter()
        for _ in range(5):
            first(feeds)
        per_block = max(3, int(block_s / ((time.perf_counter() - start) / 5)))
    samples = {key: [] for key in runners}
    order, rng = list(runners), random.Random(0)
    for _ in range(blocks):
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            for _ in range(per_block):
                runners[key](feeds)
            samples[key].append((time.perf_counter() - start) / per_block)
    return {key: statistics.median(values) for key, values in samples.items()}
