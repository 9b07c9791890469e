"""A/B of MetaSchedule's evolutionary search sizes (and float conv layouts), same trials.

Each configuration ``SEARCH[:LAYOUT]`` tunes the model from an empty database with the same
trial budget; the tuning seconds, the median seconds per measured batch, and the builds'
latencies, timed side by side with onnxruntime (interleaved medians), are printed.

    python tools/ab_search.py resnet 64 default small        # search sizes, NHWC
    python tools/ab_search.py resnet 256 small:nchw small:nhwc

``default`` is MetaSchedule's own (population 512, 4 generations); ``auto`` is lightir's
``search_sizes``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import interleaved_medians, ort_session

import lightir
from lightir.lowering import compile_model, load, tuning

SEARCH = {
    "default": {},
    "auto": None,
    "small": dict(population_size=64, init_min_unmeasured=16, genetic_num_iters=2),
    "tiny": dict(population_size=32, init_min_unmeasured=8, genetic_num_iters=1),
}


def main() -> None:
    name, trials, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    model = lightir.optimize(f"zoo:{name}", "reparam").model
    spec = model.graph.inputs[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    feeds = {spec.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    original, libraries = tuning.tune, {}
    for config in configs:
        search, _, layout = config.partition(":")
        work = Path(tempfile.mkdtemp(prefix=f"ab-{search}-"))
        stamps: list[float] = []

        def sized(*args, search=search, **kwargs):
            kwargs["search"] = SEARCH[search]
            return original(*args, **kwargs)

        tuning.tune = sized  # compile_model imports it at call time
        started = time.perf_counter()
        try:
            result = compile_model(
                model, work / "m.so", "x86", tuning_db=work / "db", tune_trials=trials,
                layout=layout or "nhwc", tune_goal=False,
                progress=lambda line, stamps=stamps: stamps.append(time.perf_counter())
                if line.startswith("tuning ") and "trials" in line else None,
            )  # fmt: skip
        finally:
            tuning.tune = original
        gaps = np.diff(stamps)
        print(
            f"{config}: {time.perf_counter() - started:.1f} s, {len(stamps)} batches, "
            f"median {np.median(gaps):.2f} s a batch; search {result.metadata['tuning']['search']}",
            flush=True,
        )
        libraries[config] = load(result.library)
    session = ort_session(model, 2)
    runners = {"ort": lambda f: session.run(None, f)}
    runners.update({k: (lambda f, lib=lib: lib.run(None, f)) for k, lib in libraries.items()})
    medians = interleaved_medians(runners, feeds, per_block=None)
    print("ms:", {k: round(v * 1e3, 3) for k, v in medians.items()})


if __name__ == "__main__":
    main()
