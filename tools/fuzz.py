"""Differential fuzzing of every pass on random valid models (see lightir.testing.fuzz).

Each graph is generated from its seed, every pass and named pipeline runs on it through
lightir.optimize, and the result is judged against onnxruntime on the original model with
inputs the verifier never saw. Failures are shrunk to a minimal model, saved as
``<out>/<pass>-<seed>.onnx`` and listed; copy one to tests/fixtures/fuzz/ to make it a
regression test (tests/testing/test_fuzz.py runs every file there).

    python tools/fuzz.py --graphs 2000 --jobs 2
    python tools/fuzz.py --graphs 1 --first 1234 --passes fold-bn   # replay one seed
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _setup() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.CRITICAL)


def default_pipelines() -> list[str]:
    """Every registered pass (prune with ``round=8``), then the named pipelines."""
    from lightir.testing.fuzz import fuzz_pipelines

    return fuzz_pipelines()


def run_seed(seed: int, pipelines: list[str], out_dir: str | None, do_shrink: bool) -> dict:
    """Generate graph ``seed`` and check every pipeline on it."""
    _setup()
    import onnx_ir as ir

    from lightir.testing.fuzz import check_pass, random_model, shrink

    started = time.perf_counter()
    try:
        model = random_model(seed)
    except Exception as exc:
        return {"seed": seed, "generator_error": f"{type(exc).__name__}: {exc}", "outcomes": []}
    outcomes = []
    for pipeline in pipelines:
        outcome = check_pass(model, pipeline, seed=seed)
        entry = {
            "pipeline": pipeline,
            "status": outcome.status,
            "verdict": outcome.verdict,
            "problem": outcome.problem,
            "fired": outcome.fired,
        }
        if outcome.verdict == "bug" and out_dir:
            verdict = outcome.verdict

            def still_fails(candidate, pipeline=pipeline, verdict=verdict):
                return check_pass(candidate, pipeline, seed=seed).verdict == verdict

            small = shrink(model, still_fails) if do_shrink else model
            path = Path(out_dir) / f"{pipeline.replace('{', '_').replace('}', '')}-{seed}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            ir.save(small, path)
            # A file is only a reproducer if it still fails once loaded back (rounding can
            # depend on the in-memory form); otherwise the seed is the reproducer.
            entry["reproduces_from_file"] = still_fails(ir.load(path))
            entry["reproducer"] = str(path)
            entry["reproducer_nodes"] = len(list(small.graph))
        outcomes.append(entry)
    return {
        "seed": seed,
        "nodes": len(list(model.graph)),
        "outcomes": outcomes,
        "seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=200)
    parser.add_argument("--first", type=int, default=0, help="seed of the first graph")
    parser.add_argument("--passes", nargs="*", help="pipelines to check (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="fuzz-failures", help="where reproducers go")
    parser.add_argument("--no-shrink", action="store_true")
    args = parser.parse_args()
    _setup()
    pipelines = args.passes or default_pipelines()
    seeds = range(args.first, args.first + args.graphs)
    fired = collections.Counter()
    verdicts = collections.Counter()
    rolled = collections.Counter()
    bugs, notes, generator_errors = [], [], []
    nodes = []
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(run_seed, seed, pipelines, args.out, not args.no_shrink) for seed in seeds
        ]
        for done, future in enumerate(futures, start=1):
            result = future.result()
            if "generator_error" in result:
                generator_errors.append((result["seed"], result["generator_error"]))
                continue
            nodes.append(result["nodes"])
            for entry in result["outcomes"]:
                verdicts[(entry["pipeline"], entry["verdict"])] += 1
                if entry["status"] == "changed":
                    fired[entry["pipeline"]] += 1
                if entry["status"] == "rolled-back":
                    rolled[entry["pipeline"]] += 1
                if entry["verdict"] == "bug":
                    bugs.append((result["seed"], entry))
                elif entry["verdict"] == "invalid-model":
                    generator_errors.append((result["seed"], entry["problem"]))
                elif entry["verdict"] != "ok":
                    notes.append((result["seed"], entry))
            if done % 50 == 0 or done == len(futures):
                elapsed = time.perf_counter() - started
                print(
                    f"[{done}/{len(futures)}] {elapsed:.0f}s, {len(bugs)} bug(s)",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"graphs: {len(nodes)} (seeds {args.first}..{args.first + args.graphs - 1}), "
        f"nodes per graph: median {sorted(nodes)[len(nodes) // 2] if nodes else 0}, "
        f"max {max(nodes, default=0)}; {time.perf_counter() - started:.0f}s"
    )
    print(f"{'pipeline':<18} {'fired':>6} {'rolled back':>12} {'over (fresh)':>13} {'bugs':>5}")
    for pipeline in pipelines:
        print(
            f"{pipeline:<18} {fired[pipeline]:>6} "
            f"{rolled[pipeline]:>12} "
            f"{verdicts[(pipeline, 'fresh-over-budget')]:>13} "
            f"{verdicts[(pipeline, 'bug')]:>5}"
        )
    for seed, error in generator_errors:
        print(f"generator error on seed {seed}: {error}")
    for seed, entry in notes[:20]:
        print(f"note: seed {seed} {entry['pipeline']}: {entry['problem'].splitlines()[0]}")
    for seed, entry in bugs:
        problem, where = entry["problem"].splitlines()[0], entry.get("reproducer", "-")
        if entry.get("reproduces_from_file") is False:
            where += f" (does not fail once loaded: reproduce with random_model({seed}))"
        print(f"BUG: seed {seed} {entry['pipeline']}: {problem} -> {where}")
    print(f"wrong or crashed: {len(bugs)}; generator errors: {len(generator_errors)}")
    return 1 if bugs or generator_errors else 0


if __name__ == "__main__":
    sys.exit(main())
