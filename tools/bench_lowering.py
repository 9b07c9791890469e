"""TVM lowering on x86: latency of untuned and tuned builds against onnxruntime, tuning time,
and a re-run with the warm database.

For each model (after ``reparam``) and each trial budget, a fresh database is tuned, the build
is timed against onnxruntime (ORT_ENABLE_ALL, batch 1, interleaved blocks, median), and then
the same compile is repeated with the now-warm database: it must tune nothing.

    python tools/bench_lowering.py --models digits resnet --trials 0 16 64
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import lightir
from lightir.lowering import compile_model, load
from lightir.onnx_bridge import ir


def ort_session(model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def latency_ratio(runners: dict, feeds, blocks=15, per_block=20) -> dict:
    for run in runners.values():
        run(feeds)
    samples = {k: [] for k in runners}
    order, rng = list(runners), random.Random(0)
    for _ in range(blocks):
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            for _ in range(per_block):
                runners[key](feeds)
            samples[key].append((time.perf_counter() - start) / per_block)
    base = statistics.median(samples["ort"])
    return {k: statistics.median(v) / base for k, v in samples.items()}, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["digits", "resnet"])
    parser.add_argument("--trials", nargs="*", type=int, default=[0, 16, 64])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(
        f"{'model':<10} {'trials':>6} {'tasks':>5} {'tune s':>7} {'build s':>8} "
        f"{'warm s':>7} {'warm tuned':>10} {'tvm/ort':>8} {'ort ms':>7}"
    )
    for name in args.models:
        model = lightir.optimize(f"zoo:{name}", "reparam").model
        spec = model.graph.inputs[0]
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        feeds = {spec.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        session = ort_session(model, args.threads)
        for trials in args.trials:
            work = Path(tempfile.mkdtemp(prefix="lightir-bench-"))
            try:
                db = work / "db" if trials else None
                started = time.perf_counter()
                built = compile_model(model, work / "m.so", "x86", tune_trials=trials, tuning_db=db)
                build_s = time.perf_counter() - started
                tuning = built.metadata["tuning"]
                warm_s, warm_tuned = float("nan"), "-"
                if trials:
                    started = time.perf_counter()
                    warm = compile_model(
                        model, work / "w.so", "x86", tune_trials=trials, tuning_db=db
                    )
                    warm_s = time.perf_counter() - started
                    warm_tuned = str(warm.metadata["tuning"]["tuned_now"])
                compiled = load(work / "m.so")
                ratios, base = latency_ratio(
                    {"ort": lambda f, s=session: s.run(None, f), "tvm": compiled.run}, feeds
                )
                print(
                    f"{name:<10} {trials:>6} {tuning.get('tasks', '-'):>5} "
                    f"{tuning.get('seconds', 0.0):>7.1f} {build_s:>8.1f} {warm_s:>7.1f} "
                    f"{warm_tuned:>10} {ratios['tvm']:>8.2f} {base * 1e3:>7.3f}",
                    flush=True,
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
