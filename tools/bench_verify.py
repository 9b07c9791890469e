"""Verification overhead and peak memory of a lightir-opt run, per model.

For each model the benchmark saves it to a temporary directory, then runs load -> optimize
(fold-bn,cleanup, verify=each) -> save in a fresh subprocess, several times. Each subprocess
reports:

* ``verify share``: verification seconds (structural checks, onnxruntime sessions and runs,
  input model check) divided by the whole run (load + passes + verification + save);
* ``peak/model``: peak resident memory above the process's baseline after imports
  (``ru_maxrss`` minus ``VmRSS`` measured before loading), divided by the model's weight bytes.

Medians over ``--repeats`` runs; all models are measured in the same invocation.

    python tools/bench_verify.py                         # zoo models + resnet50
    python tools/bench_verify.py --models resnet50 --external --repeats 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = ["resnet", "mobilenetv2", "vgg", "repvgg", "digits", "resnet50"]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def worker(path: str, pipeline: str, output: str) -> None:
    import lightir
    from lightir.io import tensor_bytes

    baseline = rss_bytes()
    t0 = time.perf_counter()
    model = lightir.load(path)
    t_load = time.perf_counter() - t0
    result = lightir.optimize(model, pipeline)
    t1 = time.perf_counter()
    lightir.save(result.model, output)
    t_save = time.perf_counter() - t1
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "ok": result.report.ok,
                "total_s": total,
                "load_s": t_load,
                "save_s": t_save,
                "verify_s": result.report.verify_seconds,
                "optimize_s": result.report.seconds,
                "model_bytes": tensor_bytes(model),
                "peak_delta_bytes": peak - baseline,
            }
        )
    )


def measure(name: str, pipeline: str, repeats: int, external: bool, workdir: Path) -> dict:
    from lightir import io as lightir_io
    from lightir import zoo

    path = workdir / f"{name}.onnx"
    lightir_io.save(zoo.build(name), path, external_data=external)
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(path), pipeline, str(workdir / "out.onnx")],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "ok"}
    median["ok"] = all(r["ok"] for r in runs)
    median["verify_share"] = statistics.median(r["verify_s"] / r["total_s"] for r in runs)
    median["peak_ratio"] = statistics.median(r["peak_delta_bytes"] / r["model_bytes"] for r in runs)
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "PIPELINE", "OUT"))
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--pipeline", default="fold-bn,cleanup")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--external", action="store_true", help="store weights as external data")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    print(
        f"pipeline {args.pipeline}; median of {args.repeats} runs; "
        f"weights {'external' if args.external else 'embedded'}"
    )
    header = (
        f"{'model':<12} {'weights':>10} {'total s':>8} {'verify s':>9} {'verify share':>13} "
        f"{'peak/model':>11} ok"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            m = measure(name, args.pipeline, args.repeats, args.external, Path(tmp))
            print(
                f"{name:<12} {m['model_bytes'] / 2**20:>8.1f}MB {m['total_s']:>8.2f} "
                f"{m['verify_s']:>9.2f} {m['verify_share']:>12.0%} {m['peak_ratio']:>10.2f}x "
                f"{'yes' if m['ok'] else 'NO'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
