"""Every corpus model x pipeline: status, cost, latency against the original, task metric.

    python tools/bench_corpus.py                         # the full matrix (hours on 2 cores)
    python tools/bench_corpus.py --models ppocrv5-cls --pipelines reparam int8
    python tools/bench_corpus.py --out corpus.md --json corpus.json

Each cell runs ``lightir-opt`` as a user would (a subprocess, so a crash is a crash and not
this script's), with the real calibration set of the model (``tasks.calibration_npz``) for
the pipelines that need data and for verification (``*-synth``: the exact pipelines
verified on synthesized inputs instead). Status is what the run ended with:
``changed``, ``unchanged``, ``declined: reason``, ``rolled-back: figures``, ``usage/input
error`` or ``crashed`` (an internal error or a traceback). Latency is onnxruntime with one
thread, the optimized and the original model timed in interleaved blocks (median); the
metric is the task's on the evaluation split (no string shared with calibration).
``--target`` cells compile with TVM and report the check against onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved_medians, ort_session  # noqa: E402

import lightir  # noqa: E402
from lightir.testing import corpus, tasks  # noqa: E402

PIPELINES = {
    "reparam": ("reparam", False),
    "fold-bn,cleanup": ("fold-bn,cleanup", False),
    # The exact pipelines again, verified on synthesized inputs (no --calib).
    "reparam-synth": ("reparam", False),
    "fold-bn,cleanup-synth": ("fold-bn,cleanup", False),
    "int8": ("int8", True),
    "prune0.2": ("prune{ratio=0.2}", True),
    "prune0.2+rec": ("prune{ratio=0.2,refit=true}", True),
    "svd0.7": ("svd{target-macs=0.7,refit=true}", True),
    "tucker0.7": ("tucker{target-macs=0.7,refit=true}", True),
    "spatial0.7": ("spatial-svd{target-macs=0.7,refit=true}", True),
    "fp16": ("fp16", False),
    "share-weights": ("share-weights", False),
    "x86": ("reparam", False),
    "arm": ("reparam", False),
}
TARGETS = {"x86": "x86", "arm": "arm"}
CALIBRATION_ROWS = 64  # the verifier judges on 32 held out, the passes fit on the other 32


def calibration_file(name: str, folder: Path) -> Path:
    path = folder / f"{name}.npz"
    if not path.exists():
        tasks.calibration_npz(name, path, CALIBRATION_ROWS)
    return path


def run_cell(name: str, key: str, folder: Path, timeout: int) -> dict:
    pipeline, needs_data = PIPELINES[key]
    source = corpus.path(name)
    calib = calibration_file(name, folder)
    target = TARGETS.get(key)
    out = folder / f"{name}.{key}.{'so' if target else 'onnx'}"
    report = folder / f"{name}.{key}.report.json"  # NAME.json is the library metadata
    command = [
        sys.executable,
        "-m",
        "lightir.cli",
        str(source),
        "-p",
        pipeline,
        "-o",
        str(out),
        "--report",
        str(report),
        "-q",
    ]
    if not key.endswith("-synth"):
        command += ["--calib", str(calib)]
    if target:
        command += ["--target", target]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout}s", "seconds": timeout}
    seconds = time.perf_counter() - start
    stderr = done.stderr.strip().splitlines()
    last = next((line for line in reversed(stderr) if "lightir-opt" in line), "")
    cell = {"seconds": seconds, "exit": done.returncode}
    if "internal error" in done.stderr or "Traceback" in done.stderr:
        cell["status"] = f"crashed: {last[:160]}"
        return cell
    if done.returncode == 2:
        cell["status"] = f"input/usage error: {last[:160]}"
        return cell
    data = json.loads(report.read_text()) if report.exists() else {}
    records = data.get("passes", [])
    statuses = [r["status"] for r in records]
    if "rolled-back" in statuses:
        cell["status"] = "rolled-back: " + "; ".join(data["failures"])[:200]
    elif "declined" in statuses:
        message = next(r["message"] for r in records if r["status"] == "declined")
        cell["status"] = "declined: " + message[:200]
    else:
        cell["status"] = "changed" if "changed" in statuses else "unchanged"
    final = data.get("final") or {}
    original = data.get("original") or {}
    cell.update(
        nodes=final.get("nodes"),
        macs=final.get("macs"),
        params=final.get("params"),
        macs_ratio=_ratio(final.get("macs"), original.get("macs")),
        params_ratio=_ratio(final.get("params"), original.get("params")),
    )
    exact = [
        float(r["tolerance"].split("<=")[1])
        for r in records
        if r["contract"] == "exact" and r.get("tolerance", "").startswith("rel<=")
    ]
    cell["max_exact_tolerance"] = max(exact) if exact else None
    if target:
        meta = out.with_suffix(".json")
        check = json.loads(meta.read_text()).get("check") if meta.exists() else None
        cell["target_check"] = check or last
        if check and check.get("rel_error") is not None:
            cell["status"] = (
                f"compiled; matches onnxruntime on {check['run_on']} "
                f"(rel {check['rel_error']:.1e} <= {check['tolerance']:.1e})"
            )
        elif check:
            cell["status"] = f"compiled; not run: {check}"[:200]
        else:
            cell["status"] = f"not compiled: {last}"[:200]
        return cell
    if out.exists() and cell["status"] == "changed":
        optimized = lightir.load(out)
        cell.update(_metric(name, optimized))
        cell["latency_ratio"] = _latency(source, out, name)
    return cell


def _ratio(a, b):
    return a / b if a is not None and b else None


def _metric(name: str, model) -> dict:
    count = 8 if corpus.MODELS[name].task == "db-det" else 32
    return {"metric": tasks.evaluate(name, model, count)}


def _latency(original: Path, optimized: Path, name: str) -> float | None:
    data = tasks.dataset(name, "evaluation", 1)
    feeds = data.batches()[0]
    try:
        a, b = ort_session(original), ort_session(optimized)
    except Exception:
        return None
    times = interleaved_medians(
        {"original": lambda f: a.run(None, f), "optimized": lambda f: b.run(None, f)},
        feeds,
        blocks=9,
        per_block=None,
        block_s=0.2,
    )
    return times["optimized"] / times["original"]


def _short_metric(metric: dict | None) -> str:
    if not metric:
        return "-"
    keys = [k for k in metric if not k.endswith("_fp32") and k != "boxes_fp32"]
    return ", ".join(f"{k} {metric[k]:.3f}" for k in keys)


def render(rows: list[dict]) -> str:
    lines = [
        "| model | pipeline | status | MACs ratio | params ratio | latency ratio | task metric "
        "(vs fp32 / truth) | max exact tol | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:

        def fmt(value, spec=".3f"):
            return "-" if value is None else format(value, spec)

        lines.append(
            f"| {row['model']} | {row['pipeline']} | {row['status']} "
            f"| {fmt(row.get('macs_ratio'))} "
            f"| {fmt(row.get('params_ratio'))} | {fmt(row.get('latency_ratio'))} "
            f"| {_short_metric(row.get('metric'))} | {fmt(row.get('max_exact_tolerance'), '.1e')} "
            f"| {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(corpus.MODELS))
    parser.add_argument("--pipelines", nargs="*", default=list(PIPELINES))
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--out", help="write the Markdown table here")
    parser.add_argument("--json", help="write every cell here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lightir-corpus-") as tmp:
        folder = Path(tmp)
        for name in args.models:
            for key in args.pipelines:
                cell = run_cell(name, key, folder, args.timeout)
                row = {"model": name, "pipeline": key, **cell}
                rows.append(row)
                print(render([row]).splitlines()[-1], flush=True)
    table = render(rows)
    if args.out:
        Path(args.out).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
