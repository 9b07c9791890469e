"""``lightir-opt``: optimize an ONNX model with a pipeline of checked passes.

Exit codes: 0 every pass kept its contract; 1 a pass was rolled back or a check failed (the
last good model is still written); 2 usage or input error (nothing is written).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from lightir import progress, registry, zoo
from lightir.errors import BudgetUnmet, LightirError, UsageError
from lightir.instruments import DumpDir, PrintIRAfter
from lightir.io import save
from lightir.manager import VERIFY_MODES, optimize
from lightir.pass_base import option_fields
from lightir.pipeline import format_value
from lightir.report import render_explain, render_table, render_timing
from lightir.verify import first_line

logger = logging.getLogger("lightir")
PROG = "lightir-opt"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{message}; see {PROG} --help")


def _key_value(text: str, what: str, convert):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"{what} {text!r}: expected NAME=VALUE")
    try:
        return name, convert(value)
    except ValueError:
        raise UsageError(f"{what} {text!r}: {value!r} is not a valid value") from None


def _tolerance(text: str):
    from lightir.verify import parse_tolerance

    parse_tolerance(text)  # raises ValueError on bad text
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    parser = _Parser(
        prog=PROG,
        description="Optimize an ONNX model with a pipeline of passes, each checked with "
        "onnxruntime and rolled back if it breaks its contract.",
        epilog="Example: lightir-opt zoo:resnet -p fold-bn,cleanup -o resnet.onnx",
    )
    parser.add_argument(
        "model", nargs="?", help="input .onnx file, or zoo:NAME for a bundled model"
    )
    parser.add_argument(
        "-p", "--pipeline", help="passes, e.g. 'fold-bn,cleanup' or 'prune{ratio=0.3}'"
    )
    parser.add_argument("-o", "--output", help="where to write the optimized model")
    parser.add_argument(
        "--calib",
        help=".npz with one array per model input (axis 0 = samples), optionally __labels__; "
        "or a folder (subfolders = labels) or .txt list of images (see --preprocess)",
    )
    parser.add_argument(
        "--preprocess",
        help="how --calib images become the input: resize=N,crop=HxW,mean=a:b:c,std=a:b:c,"
        "scale=255,order=RGB|BGR,layout=NCHW|NHWC (defaults: the input's size and layout)",
    )
    parser.add_argument(
        "--metric",
        help="score original and result on held-out --calib samples: top1 (needs __labels__), "
        "agreement, cosine, snr, or module:function",
    )
    parser.add_argument(
        "--verify",
        choices=VERIFY_MODES,
        default="each",
        help="each: structure and numbers after every pass (default); end: numbers "
        "once at the end; structural: no onnxruntime runs",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="after a pass is rolled back, run the remaining passes",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="verification samples (default: 2 synthesized, or 32 held-out --calib rows, "
        "half of them when it has fewer than 64)",
    )
    parser.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=N",
        help="value of a named dynamic dim for verification (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of synthesized inputs")
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="PASS=BOUNDS",
        help="override a pass's bounds: PASS=REL or PASS=rel:R,cos:C,top1:T (repeatable)",
    )
    parser.add_argument("--report", help="write the machine-readable report to this JSON file")
    parser.add_argument(
        "--report-html",
        metavar="FILE",
        help="write the report as one self-contained HTML page: tables and plots (the plots "
        "need matplotlib: pip install 'lightir[report]')",
    )
    parser.add_argument(
        "--report-md", metavar="FILE", help="write the report's tables as Markdown (CI logs)"
    )
    parser.add_argument(
        "--sensitivity",
        metavar="FILE",
        help="write compress's per-layer sensitivity table (FILE.csv or FILE.json)",
    )
    parser.add_argument(
        "--front",
        metavar="FILE",
        help="write compress's explored front, metric drop against cost (FILE.csv or FILE.json)",
    )
    parser.add_argument("--timing", action="store_true", help="print pass vs verification time")
    parser.add_argument("--explain", action="store_true", help="print why rewrites did not fire")
    parser.add_argument("--print-ir-after-all", action="store_true")
    parser.add_argument("--print-ir-after", action="append", default=[], metavar="PASS")
    parser.add_argument("--dump-dir", help="save the model after every pass into this directory")
    parser.add_argument(
        "--load-pass-plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module or .py file that registers passes (repeatable)",
    )
    parser.add_argument(
        "--target",
        help="compile the optimized model with TVM for x86, arm, cuda (or a preset / JSON "
        "dict; needs lightir[tvm]); -o then names the library, NAME.so, with NAME.json beside it",
    )
    parser.add_argument(
        "--tune",
        type=int,
        default=0,
        metavar="TRIALS",
        help="MetaSchedule trials for the kernels --tuning-db lacks (needs lightir[tune])",
    )
    parser.add_argument(
        "--tune-minutes",
        type=float,
        metavar="M",
        help="stop --tune after about M minutes (the batch in flight ends; records kept)",
    )
    parser.add_argument(
        "--tuning-db", metavar="DIR", help="tuning database, reused across runs and models"
    )
    parser.add_argument(
        "--rpc",
        metavar="HOST:PORT:KEY",
        help="measure --tune trials on the devices registered under KEY with TVM's RPC "
        "tracker at HOST:PORT (a board for arm, a GPU box for cuda)",
    )
    parser.add_argument("--list-passes", action="store_true", help="list passes and pipelines")
    parser.add_argument(
        "--list-models", action="store_true", help="list the bundled models (zoo:NAME)"
    )
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads for checks")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no table or progress bars on stderr"
    )
    parser.add_argument("--debug", action="store_true", help="log details and show tracebacks")
    return parser


def list_passes() -> str:
    """The text of ``--list-passes``."""
    lines = ["passes:"]
    for name, cls in registry.all_passes().items():
        lines.append(f"  {name:<18} {cls.contract.describe():<28} {cls.summary}")
        strength = getattr(cls, "strength", None)
        searched = set() if strength is None else {strength.option, *strength.alternatives}
        searched = {key.replace("-", "_") for key in searched}
        for f in option_fields(cls.Options):
            if f.default is dataclasses.MISSING:
                default = "(required)"
            elif f.name in searched and not cls.contract.is_exact:
                # Not the value it runs at: with none of these given, the strength is searched.
                default = "(searched when no strength is given)"
            elif "shown" in f.metadata:  # a sentinel default: what it means instead
                default = f"({f.metadata['shown']})"
            else:
                default = format_value(f.default)
            lines.append(f"  {'':<18}   {f.name.replace('_', '-')}={default}")
    lines.append("pipelines:")
    for name, named in registry.all_pipelines().items():
        lines.append(f"  {name:<18} = {named.text:<26} {named.summary}")
    return "\n".join(lines)


def list_models() -> str:
    """The text of ``--list-models``: each bundled model and what it is."""
    lines = ["bundled models (give as zoo:NAME):"]
    for name in zoo.names():
        doc = (zoo.BUILDERS[name].__doc__ or "").strip().splitlines()
        lines.append(f"  zoo:{name:<14} {doc[0] if doc else ''}")
    return "\n".join(lines)


def _check_output_path(output: str, model: str) -> None:
    out = Path(output)
    if out.is_dir():
        raise UsageError(f"-o {output}: is a directory; give a file name")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"-o {output}: directory {out.resolve().parent} does not exist")
    if not model.startswith("zoo:") and Path(model).exists() and out.exists():
        if os.path.samefile(out, model):
            raise UsageError(f"-o {output}: is the input model; choose another output path")


def run(argv: list[str]) -> int:
    """Parse ``argv``, run, and return the exit code (errors raise LightirError)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.quiet and not args.debug:
        logging.getLogger("lightir.search").setLevel(logging.INFO)  # a search's progress
    if args.quiet:
        progress.enabled = False
    for plugin in args.load_pass_plugin:
        registry.load_pass_plugin(plugin)
    if args.list_passes:
        print(list_passes())
        return 0
    if args.list_models:
        print(list_models())
        return 0
    if not args.model:
        raise UsageError("no input model; give a .onnx file or zoo:NAME")
    if not args.pipeline:
        raise UsageError("no pipeline; give -p PASSES (see --list-passes)")
    if args.output:
        _check_output_path(args.output, args.model)
    if (args.tune or args.tuning_db) and not args.target:
        raise UsageError("--tune and --tuning-db need --target")
    if args.tune_minutes is not None and (not args.tune or args.tune_minutes <= 0):
        raise UsageError("--tune-minutes M caps --tune N: give both, with M > 0")
    if args.target:
        if not args.output or not args.output.endswith(".so"):
            raise UsageError("--target needs -o NAME.so, the library to write")
        _require_tvm()
        from lightir.lowering import resolve

        resolve(args.target)  # an unknown target fails now, not after the pipeline ran
    rpc = None
    if args.rpc:
        if not args.tune:
            raise UsageError(
                "--rpc measures tuning trials: give --target, --tune N and --tuning-db"
            )
        from lightir.lowering.rpc import RPCTracker

        rpc = RPCTracker.parse(args.rpc)
        rpc.check()  # a dead tracker or no server for the key: now, before any pass runs
    for flag, path in (
        ("--report", args.report),
        ("--report-html", args.report_html),
        ("--report-md", args.report_md),
    ):
        if path and not Path(path).resolve().parent.is_dir():
            raise UsageError(f"{flag} {path}: its directory does not exist")
    for flag, path in (("--sensitivity", args.sensitivity), ("--front", args.front)):
        if path and (Path(path).suffix not in (".csv", ".json")):
            raise UsageError(f"{flag} {path}: give a .csv or .json file name")
        if path and not Path(path).resolve().parent.is_dir():
            raise UsageError(f"{flag} {path}: its directory does not exist")
    dims = dict(_key_value(d, "--dim", int) for d in args.dim)
    tolerances = dict(_key_value(t, "--tolerance", _tolerance) for t in args.tolerance)
    instruments = []
    if args.print_ir_after_all or args.print_ir_after:
        instruments.append(
            PrintIRAfter(None if args.print_ir_after_all else set(args.print_ir_after))
        )
    if args.dump_dir:
        instruments.append(DumpDir(args.dump_dir))

    result = optimize(
        args.model,
        args.pipeline,
        calib=args.calib,
        verify=args.verify,
        keep_going=args.keep_going,
        samples=args.samples,
        dims=dims,
        seed=args.seed,
        tolerances=tolerances,
        instruments=instruments,
        threads=args.threads,
        metric=args.metric,
        preprocess=args.preprocess,
    )
    report = result.report
    if not args.quiet:
        print(render_table(report), file=sys.stderr)
    if args.timing:
        print(render_timing(report), file=sys.stderr)
    if args.explain:
        print(render_explain(report), file=sys.stderr)
    unmet = [r for r in report.records if r.failure == "budget"]
    if unmet:
        # The user's budget cannot be met: an input error, and no model is written.
        # What the search measured still goes out: it says how far the budget is.
        _write_reports(args, report)
        raise BudgetUnmet(f"{unmet[0].message}; no model written")
    if args.output and args.target and report.ok:
        from lightir.lowering import compile_model
        from lightir.manager import bind_calibration

        lowered = compile_model(
            result.model,
            args.output,
            args.target,
            dims=dims,
            # The library is checked on calibration rows when there are some: in range.
            calib=bind_calibration(args.calib, result.model),  # its preprocess is stored
            pipeline=report.pipeline,
            tune_trials=args.tune,
            tune_seconds=args.tune_minutes * 60 if args.tune_minutes else None,
            tuning_db=args.tuning_db,
            rpc=rpc,
            progress=None if args.quiet else lambda line: print(line, file=sys.stderr),
        )
        if not args.quiet:
            if not lowered.checked:
                check = "; ".join(lowered.notes)
            elif lowered.stepwise:  # kept per quantized tensor: the note says how
                check = f"checked against onnxruntime (run on {lowered.checked_on}): " + (
                    "; ".join(lowered.notes)
                )
            else:
                check = "; ".join(
                    [
                        f"matches onnxruntime (run on {lowered.checked_on}): rel error "
                        f"{lowered.rel_error:.2e} <= {lowered.tolerance:.2g}",
                        *lowered.notes,  # e.g. the integer build was not kept, and why
                    ]
                )
            tuning = lowered.metadata["tuning"]
            tuned = (
                f"; tuning: {tuning['tuned_now']} task(s) tuned now, "
                f"{tuning['already_tuned']} of {tuning['tasks']} from the database"
                + _tuning_stop(tuning)
                if tuning
                else ""
            )
            print(
                f"compiled for {lowered.metadata['target_name']} in {lowered.seconds:.1f}s: "
                f"{args.output}; {check}{tuned}",
                file=sys.stderr,
            )
    elif args.output and not args.target:
        save(result.model, args.output)
    elif not args.output and not args.quiet:
        print("no -o given: nothing written (-o OUT.onnx writes the result)", file=sys.stderr)
    _write_reproducers(args, report)
    _write_reports(args, report)
    for record in report.records:
        if record.status == "declined":
            print(f"{PROG}: {record.message}", file=sys.stderr)
    for failure in report.failures:
        print(f"{PROG}: {failure}", file=sys.stderr)
    return 0 if report.ok else 1


def _tuning_stop(tuning: dict) -> str:
    """Why tuning ended before its trials, for the compile line; "" when it did not."""
    if tuning.get("stopped") == "goal":
        return (
            f", stopped at onnxruntime's time (kernels {tuning['estimate_ms']:.3f} ms, "
            f"onnxruntime {tuning['goal_ms']:.3f} ms)"
        )
    if tuning.get("stopped") == "time":
        return f", stopped when --tune-minutes ran out after {tuning['seconds']:.0f} s"
    return ""


def _require_tvm() -> None:
    """Import TVM now, before any pass runs.

    A broken install is then a one-line error (exit 2), not a traceback after the pipeline.
    """
    import importlib.util

    if importlib.util.find_spec("tvm") is None:
        raise UsageError("--target needs Apache TVM: pip install 'lightir[tvm]'")
    try:
        import tvm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to import is the same answer
        raise UsageError(
            f"--target needs Apache TVM, which is installed but does not import "
            f"({type(exc).__name__}: {first_line(exc)}); reinstall it: "
            "pip install --force-reinstall 'lightir[tvm]'"
        ) from exc


def _write_reports(args, report) -> None:
    """Every report the command line asked for: JSON, HTML, Markdown, the search's tables."""
    if args.report:
        _write_json(args.report, report.as_dict())
    if args.report_html or args.report_md:
        from lightir.report_html import render_html, render_markdown

        if args.report_html:
            _write_text(args.report_html, render_html(report))
        if args.report_md:
            _write_text(args.report_md, render_markdown(report))
    for path, key in ((args.sensitivity, "sensitivity"), (args.front, "front")):
        if path:
            _write_rows(path, _stat_rows(report, key), f"--{key}")


def _write_reproducers(args, report) -> None:
    """Each exact pass that broke its contract: the model it fails on alone, next to -o."""
    for record in report.records:
        if record.reproducer is None:
            continue
        found = record.stats["bisect"]
        if not args.output:
            print(
                f"{PROG}: #{record.index} {record.name}: a reproducer was cut "
                f"({found['reproducer']}); give -o to write it next to the output",
                file=sys.stderr,
            )
            continue
        output = Path(args.output)
        path = output.with_name(f"{output.stem}.{record.index}-{record.name}.repro.onnx")
        save(record.reproducer, str(path))
        found["reproducer_path"] = str(path)
        print(
            f"{PROG}: #{record.index} {record.name}: reproducer written to {path} "
            f"({found['reproducer']}: {PROG} {path} -p '{found['pass']}' fails on it)",
            file=sys.stderr,
        )


def _write_text(path: str, text: str) -> None:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.resolve().parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    _publish(tmp, target)


def _stat_rows(report, key: str) -> list[dict]:
    """The rows of ``stats[key]`` of every pass that has them, each with its pass and index."""
    rows = []
    for record in report.records:
        for row in record.stats.get(key, ()):
            rows.append({"pass": record.name, "index": record.index, **row})
    return rows


def _write_rows(path: str, rows: list[dict], flag: str) -> None:
    """Rows as CSV (columns from the first row) or JSON, by the file's suffix."""
    if not rows:
        print(
            f"{PROG}: {flag}: no pass in the pipeline produced one; {path} not written",
            file=sys.stderr,
        )
        return
    if path.endswith(".json"):
        _write_json(path, {"rows": rows})
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.resolve().parent)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()}
            )
    _publish(tmp, target)


def _write_json(path: str, payload: dict) -> None:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.resolve().parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, default=float)
    _publish(tmp, target)


def _publish(tmp: str, target: Path) -> None:
    """Move a finished temporary file into place with the permissions a plain write gives.

    ``mkstemp`` makes files only their owner can read (0600); reports are for everyone.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        code = run(argv)
    except LightirError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug: say so in one line, traceback with --debug
        if debug:
            raise
        detail = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"{PROG}: internal error: {type(exc).__name__}: {detail} "
            "(rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
