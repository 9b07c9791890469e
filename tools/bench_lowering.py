"""TVM lowering on x86: latency of untuned and tuned builds against onnxruntime, tuning time,
and a re-run with the warm database.

For each model (after ``reparam``) and each trial budget, a fresh database is tuned, the build
is timed against onnxruntime (ORT_ENABLE_ALL, batch 1, interleaved blocks, median), and then
the same compile is repeated with the now-warm database: it must tune nothing. ``applied``
counts the kernels that got a tuned schedule from the database.

    python tools/bench_lowering.py --models digits resnet --trials 0 32 128 512   # 62 min
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import interleaved_medians, ort_session

import lightir
from lightir.lowering import compile_model, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["digits", "resnet"])
    parser.add_argument("--trials", nargs="*", type=int, default=[0, 32, 128])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(
        f"{'model':<10} {'trials':>6} {'tasks':>5} {'tune s':>7} {'build s':>8} "
        f"{'warm s':>7} {'warm tuned':>10} {'applied':>7} {'tvm/ort':>8} {'ort ms':>7}"
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
                medians = interleaved_medians(
                    {
                        "ort": lambda f, s=session: s.run(None, f),
                        "tvm": lambda f, c=compiled: c.run(None, f),
                    },
                    feeds,
                    blocks=15,
                    per_block=20,
                )
                base = medians["ort"]
                ratios = {key: value / base for key, value in medians.items()}
                print(
                    f"{name:<10} {trials:>6} {tuning.get('tasks', '-'):>5} "
                    f"{tuning.get('seconds', 0.0):>7.1f} {build_s:>8.1f} {warm_s:>7.1f} "
                    f"{warm_tuned:>10} {tuning.get('applied', '-'):>7} {ratios['tvm']:>8.2f} "
                    f"{base * 1e3:>7.3f}",
                    flush=True,
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
