"""Verification overhead and peak memory of a lightir-opt run, per model.

For each model the benchmark saves it to a temporary directory, then a fresh subprocess runs
load -> optimize (fold-bn,cleanup, verify=each) -> save ``--repeats`` times and reports:

* ``cold share``: verification seconds divided by the whole run, for the first run: it carries
  the one-time initialization (onnxruntime kernels, first-call paths) that a single
  ``lightir-opt`` invocation pays;
* ``verify share``: the same ratio, median over the other runs (steady state); verification is
  the input model's check plus every pass's structural check, onnxruntime session and runs;
  the whole run is load + passes + verification + save;
* ``peak/model``: peak resident memory of the first run above the process's baseline
  (``ru_maxrss`` after it minus ``VmRSS`` before it), divided by the model's weight bytes.

Before measuring, the worker runs the same pipeline once on a one-layer model saved and loaded
like the real one, so imports and onnxruntime's environment are not counted as the model's.

    python tools/bench_verify.py                         # zoo models + resnet50
    python tools/bench_verify.py --models resnet50 --external
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


def worker(path: str, pipeline: str, output: str, repeats: int) -> None:
    import lightir
    from lightir import registry
    from lightir.builder import GraphBuilder
    from lightir.io import tensor_bytes

    # Baseline after the one-time costs that do not depend on the model (imports of every
    # pass, onnxruntime's environment, first-call initialization in onnx-ir and onnxscript):
    # the same pipeline runs once on a one-layer model loaded from a file first.
    registry.load_builtins()
    builder = GraphBuilder("warm-up")
    x = builder.input("x", [1, 2, 4, 4])
    builder.output(builder.relu(builder.batch_norm(builder.conv(x, 2, 3))))
    warm_up = Path(output).with_name("warm-up.onnx")
    lightir.save(builder.build(), warm_up)
    lightir.optimize(lightir.load(warm_up), pipeline)
    baseline = rss_bytes()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = lightir.load(path)
        result = lightir.optimize(model, pipeline)
        lightir.save(result.model, output)
        total = time.perf_counter() - t0
        runs.append({"total_s": total, "verify_s": result.report.verify_seconds})
        ok = result.report.ok
        del model, result
        if len(runs) == 1:
            # Peak of one run, as a lightir-opt invocation has it. Later runs in the same
            # process reuse memory that glibc keeps after the first (not a leak: it stays flat).
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "ok": ok,
                "runs": runs,
                "model_bytes": tensor_bytes(lightir.load(path)),
                "peak_delta_bytes": peak - baseline,
            }
        )
    )


def measure(name: str, pipeline: str, repeats: int, external: bool, workdir: Path) -> dict:
    from lightir import io as lightir_io
    from lightir import zoo

    path = workdir / f"{name}.onnx"
    lightir_io.save(zoo.build(name), path, external_data=external)
    command = [sys.executable, __file__, "--worker", str(path), pipeline, str(workdir / "o.onnx")]
    proc = subprocess.run(
        [*command, "--repeats", str(repeats)], capture_output=True, text=True, check=True
    )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = data["runs"]
    steady = runs[1:] or runs
    return {
        "ok": data["ok"],
        "model_bytes": data["model_bytes"],
        "peak_delta_bytes": data["peak_delta_bytes"],
        "peak_ratio": data["peak_delta_bytes"] / data["model_bytes"],
        "cold_total_s": runs[0]["total_s"],
        "cold_share": runs[0]["verify_s"] / runs[0]["total_s"],
        "total_s": statistics.median(r["total_s"] for r in steady),
        "verify_s": statistics.median(r["verify_s"] for r in steady),
        "verify_share": statistics.median(r["verify_s"] / r["total_s"] for r in steady),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "PIPELINE", "OUT"))
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--pipeline", default="fold-bn,cleanup")
    parser.add_argument("--repeats", type=int, default=6, help="runs per model (first is cold)")
    parser.add_argument("--external", action="store_true", help="store weights as external data")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeats)
        return
    print(
        f"pipeline {args.pipeline}; {args.repeats} runs per model in one process: first (cold) "
        f"share, then medians of the other runs; "
        f"weights {'external' if args.external else 'embedded'}"
    )
    header = (
        f"{'model':<12} {'weights':>10} {'cold share':>11} {'total s':>8} {'verify s':>9} "
        f"{'verify share':>13} "
        f"{'peak MB':>8} {'peak/model':>11} ok"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            m = measure(name, args.pipeline, args.repeats, args.external, Path(tmp))
            print(
                f"{name:<12} {m['model_bytes'] / 2**20:>8.1f}MB {m['cold_share']:>10.0%} "
                f"{m['total_s']:>8.2f} "
                f"{m['verify_s']:>9.2f} {m['verify_share']:>12.0%} "
                f"{m['peak_delta_bytes'] / 2**20:>8.1f} {m['peak_ratio']:>10.2f}x "
                f"{'yes' if m['ok'] else 'NO'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
