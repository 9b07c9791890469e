"""Run a pipeline of passes, checking each pass's contract and rolling back the ones that break it.

For every pass:

1. a structural snapshot of the model is taken (``ir.Model.clone``: nodes and values are new
   objects, tensors are shared, so no weight is copied);
2. the pass rewrites the model in place;
3. the IR invariants and ``onnx.checker`` run, then onnxruntime runs the new model on the
   verification inputs and its outputs are compared with the last accepted model's (kept
   from the previous step, so each pass costs one onnxruntime run);
4. a pass that raises, breaks the structure or breaks its contract is rolled back to the
   snapshot, reported, and the run stops (or goes on with ``keep_going``).

At the end the result is compared with the original model (accumulated drift).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from lightir import io as lightir_io
from lightir.analysis.cost import ModelCost, model_cost
from lightir.canonicalize import canonicalize
from lightir.data import CalibrationData, InputSpec, concrete_shape, input_specs, synthesize
from lightir.errors import InputError, PassDeclined, PassFailedError, UsageError
from lightir.ir_util import clone_model
from lightir.onnx_bridge import OrtModel, check_structure, weightless_proto
from lightir.pass_base import Contract, Pass, PassContext
from lightir.pipeline import (
    MAX_FIXPOINT_ROUNDS,
    Fixpoint,
    expand,
    flatten,
    format_pipeline,
    parse_pipeline,
)
from lightir.verify import (
    PROBE_MARK,
    OutputInfo,
    OutputMetrics,
    StructureError,
    Tolerance,
    check_input_model,
    check_ir_invariants,
    compare_outputs,
    output_scales,
    rounding_noise,
    tolerance_for,
    violations,
)

logger = logging.getLogger(__name__)

VERIFY_MODES = ("each", "end", "structural")


@dataclass
class PassRecord:
    """What happened in one pass."""

    index: int
    name: str
    contract: str
    status: str  # "changed", "unchanged", "rolled-back"
    seconds: float
    verify_seconds: float
    cost: ModelCost
    tolerance: str = ""
    vs_previous: list[OutputMetrics] = field(default_factory=list)
    vs_original: list[OutputMetrics] = field(default_factory=list)
    message: str = ""
    declines: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def begin(cls, index: int, pass_: Pass, cost: ModelCost) -> PassRecord:
        """The record of a pass about to run (unchanged until it says otherwise)."""
        return cls(index, pass_.name, pass_.contract.describe(), "unchanged", 0.0, 0.0, cost)

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        return {
            "index": self.index,
            "pass": self.name,
            "contract": self.contract,
            "status": self.status,
            "seconds": self.seconds,
            "verify_seconds": self.verify_seconds,
            "cost": self.cost.as_dict(),
            "tolerance": self.tolerance,
            "vs_previous": [m.as_dict() for m in self.vs_previous],
            "vs_original": [m.as_dict() for m in self.vs_original],
            "message": self.message,
            "declines": self.declines,
            "stats": self.stats,
        }


@dataclass
class Report:
    """The whole run: the pipeline, each pass, the accumulated drift and the verdict."""

    model: str
    pipeline: str
    verify: str
    inputs: str
    original: ModelCost
    records: list[PassRecord] = field(default_factory=list)
    final: ModelCost | None = None
    drift: list[OutputMetrics] = field(default_factory=list)
    seconds: float = 0.0
    verify_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    rounding_noise: float = 0.0
    canonicalize: PassRecord | None = None  # import canonicalization, before the passes

    @property
    def ok(self) -> bool:
        """No pass was rolled back and no check failed."""
        return not self.failures

    def as_dict(self) -> dict:
        """Plain dict for ``--report FILE.json``."""
        return {
            "model": self.model,
            "pipeline": self.pipeline,
            "verify": self.verify,
            "inputs": self.inputs,
            "ok": self.ok,
            "failures": self.failures,
            "seconds": self.seconds,
            "verify_seconds": self.verify_seconds,
            "rounding_noise": self.rounding_noise,
            "original": self.original.as_dict(),
            "canonicalize": self.canonicalize.as_dict() if self.canonicalize else None,
            "final": self.final.as_dict() if self.final else None,
            "passes": [r.as_dict() for r in self.records],
            "drift": [m.as_dict() for m in self.drift],
        }


@dataclass
class Result:
    """The optimized model and the report of how it was made."""

    model: ir.Model
    report: Report


class Instrument:
    """Hooks around each pass (``--print-ir-after``, ``--dump-dir``, ...)."""

    def before_pass(self, index: int, pass_: Pass, model: ir.Model) -> None:
        """Called before the pass runs."""

    def after_pass(self, index: int, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        """Called after the pass ran and was checked (``model`` is the accepted model)."""


def _inputs_description(calibration: CalibrationData | None, batches: list[dict]) -> str:
    rows = sum(next(iter(b.values())).shape[0] for b in batches) if batches else 0
    source = f"calibration file {calibration.source}" if calibration else "synthesized"
    return f"{len(batches)} batch(es), {rows} sample(s), {source}"


def _verification_inputs(
    specs: list[InputSpec],
    calibration: CalibrationData | None,
    samples: int,
    dims: Mapping[str, int] | None,
    seed: int,
) -> list[dict[str, np.ndarray]]:
    if calibration is not None:
        batches = list(calibration.batches(batch_size=samples, limit=max(samples, 1)))
        if not batches:
            raise InputError(f"--calib {calibration.source}: too few samples for one batch")
        return batches
    return synthesize(specs, samples=samples, dims=dict(dims or {}), seed=seed)


def resolve_model(model_or_path: ir.Model | str | Path) -> tuple[ir.Model, str]:
    """Accept a model, a path, or ``zoo:NAME``; return the model and its display name."""
    if isinstance(model_or_path, ir.Model):
        # Work on a structural copy (weights shared): the caller's model is never modified.
        return clone_model(model_or_path), model_or_path.graph.name or "<model>"
    text = str(model_or_path)
    if text.startswith("zoo:"):
        from lightir import zoo

        return zoo.build(text[4:]), text
    return lightir_io.load(text), text


def optimize(
    model_or_path: ir.Model | str | Path,
    pipeline: str | Sequence[Pass],
    *,
    calib: str | Path | CalibrationData | None = None,
    verify: str = "each",
    keep_going: bool = False,
    samples: int | None = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    tolerances: Mapping[str, float] | None = None,
    instruments: Sequence[Instrument] = (),
    threads: int = 0,
) -> Result:
    """Run ``pipeline`` on a model and check every pass.

    Args:
        model_or_path: an ``onnx_ir.Model`` (left unchanged: the passes work on a copy that
            shares its weights), a ``.onnx`` path, or ``"zoo:NAME"``.
        pipeline: pipeline text (``"fold-bn,cleanup"``) or pass instances.
        calib: calibration ``.npz`` path or data; also used as verification inputs.
        verify: ``"each"`` (structure and numbers after every pass, default), ``"end"``
            (structure after every pass, numbers once at the end), ``"structural"`` (no
            onnxruntime runs).
        keep_going: after a pass is rolled back, run the remaining passes.
        samples: verification samples (one batch when the batch dim is dynamic). Default:
            2 synthesized; with ``calib``, a quarter of its rows, at least 2 and at most 8
            (two lines of text told int8's fate on a recognizer; eight tell it better).
        dims: values for named dynamic dims (``{"batch": 4}``).
        seed: seed of synthesized inputs.
        tolerances: per pass name, a relative-error bound overriding its contract's.
        instruments: hooks called around each pass.
        threads: onnxruntime intra-op threads for verification (0: its default).

    Returns:
        :class:`Result`; ``result.report.ok`` is false when a pass was rolled back.

    Raises:
        InputError, UsageError: bad model, pipeline or calibration data.
        PassFailedError: only with ``verify="end"``, when the final check fails.

    """
    if verify not in VERIFY_MODES:
        raise UsageError(f"verify={verify!r}: use one of {', '.join(VERIFY_MODES)}")
    if samples is not None and samples < 1:
        raise UsageError(f"samples={samples}: give at least 1")
    start = time.perf_counter()
    if isinstance(pipeline, str):
        specs = parse_pipeline(pipeline)
        items = expand(specs)
        pipeline_text = format_pipeline(specs)
    else:
        items = list(pipeline)
        pipeline_text = ",".join(p.name for p in items)
    passes = flatten(items)
    tolerances = dict(tolerances or {})
    unknown = sorted(set(tolerances) - {p.name for p in passes})
    if unknown:
        raise UsageError(f"tolerance given for {', '.join(unknown)}, not in the pipeline")

    model, display_name = resolve_model(model_or_path)
    _check_structure(model, display_name, "the input model")
    source = model
    model = clone_model(source)
    canonical = canonicalize(model)
    specs_in = input_specs(model)
    calibration = (
        calib
        if isinstance(calib, CalibrationData) or calib is None
        else CalibrationData.from_npz(calib)
    )
    if calibration is not None:
        calibration = calibration.bind(specs_in)
    if samples is None:
        samples = 2 if calibration is None else min(8, max(2, calibration.rows // 4))
    batches = _verification_inputs(specs_in, calibration, samples, dims, seed)
    # Costs are per sample: a dynamic batch dim counts as 1.
    input_shapes = {spec.name: concrete_shape(spec, 1, dict(dims or {})) for spec in specs_in}
    if calibration is not None:
        input_shapes = {
            name: (1, *array.shape[1:]) if specs_in[0].dynamic_batch else array.shape
            for name, array in batches[0].items()
        }

    verify_seconds = 0.0
    t0 = time.perf_counter()
    scales = output_scales(model)
    original_outputs = None
    canonical_record = None
    if canonical:
        canonical_record, model, original_outputs = _check_canonical(
            source, model, canonical, verify, batches, scales, display_name, threads
        )
    elif verify != "structural":
        original_outputs = _reference_outputs(model, batches, display_name, threads)
    noise = 0.0
    if original_outputs is not None and any(p.contract.is_exact for p in passes):
        noise = rounding_noise(
            model, batches, original_outputs, seed=seed, threads=threads, scales=scales
        )
    verify_seconds += time.perf_counter() - t0
    report = Report(
        model=display_name,
        pipeline=pipeline_text,
        verify=verify,
        inputs=_inputs_description(calibration, batches),
        # Counted on the canonical form: weights held in Constant nodes count as parameters.
        original=model_cost(model, input_shapes),
        rounding_noise=noise,
    )
    if canonical_record is not None:
        canonical_record.cost = report.original
        report.canonicalize = canonical_record
        if canonical_record.status == "rolled-back":
            report.failures.append(canonical_record.message)
    previous_outputs = original_outputs
    context_calibration = calibration
    verified_rows = sum(next(iter(b.values())).shape[0] for b in batches)
    if calibration is not None and calibration.rows >= 2 * verified_rows:
        # Passes fit on the other samples, so verification judges them on data they did not see.
        context_calibration = calibration.tail(verified_rows)
    elif calibration is not None:
        logger.warning(
            "--calib %s has %d samples: passes and verification share them",
            calibration.source,
            calibration.rows,
        )

    schedule = _Schedule(items)
    index = 0
    stop = False
    for scheduled in schedule:
        # A pass that emits ops newer than the model's opset first gets a verified upgrade.
        steps = _with_opset_upgrade(scheduled, model)
        if not steps:
            index += 1
            reason = f"the installed onnx knows opsets up to {_newest_opset()}"
            _declined_for_opset(report, scheduled, index, reason)
            continue
        for pass_ in steps:
            index += 1
            for instrument in instruments:
                instrument.before_pass(index, pass_, model)
            snapshot = clone_model(model)
            context = PassContext(context_calibration)
            record = PassRecord.begin(index, pass_, report.original)
            t_pass = time.perf_counter()
            failure = declined = None
            try:
                result = pass_.run(model, context)
                if result is None or not hasattr(result, "modified"):
                    raise TypeError(f"run() returned {result!r}, not a PassResult")
                # A pass may hand back a new model object (graphsurgeon passes do).
                model = result.model
                modified = result.modified
                record.stats = dict(result.stats)
            except PassDeclined as exc:
                declined, modified = str(exc), False
            except Exception as exc:
                logger.debug("pass %s raised", pass_.name, exc_info=True)
                failure = f"raised {type(exc).__name__}: {_first_line(exc)}"
                modified = True
            record.seconds = time.perf_counter() - t_pass
            record.declines = list(context.declines)

            t_verify = time.perf_counter()
            outputs = previous_outputs
            if failure is None and declined is None and modified:
                tolerance = tolerance_for(pass_.contract, model, tolerances.get(pass_.name), noise)
                record.tolerance = tolerance.describe()
                failure, outputs = _check_pass(
                    model,
                    verify,
                    batches,
                    previous_outputs,
                    original_outputs,
                    tolerance,
                    record,
                    threads,
                    scales,
                )
            record.verify_seconds = time.perf_counter() - t_verify
            verify_seconds += record.verify_seconds

            if declined is not None:
                model = snapshot
                record.status = "declined"
                record.message = f"pass '{pass_.name}' (#{index}) declined: {declined}"
            elif failure is not None:
                model = snapshot
                record.status = "rolled-back"
                record.message = f"pass '{pass_.name}' (#{index}) {failure}; rolled back"
                report.failures.append(record.message)
            else:
                record.status = "changed" if modified else "unchanged"
                previous_outputs = outputs
                schedule.changed |= modified
            record.cost = model_cost(model, input_shapes) if modified else _last_cost(report)
            report.records.append(record)
            for instrument in instruments:
                instrument.after_pass(index, pass_, model, record)
            stop = failure is not None and not keep_going
            if pass_ is not steps[-1] and record.status in ("declined", "rolled-back"):
                # The upgrade did not happen: the pass that needed it cannot run.
                index += 1
                _declined_for_opset(report, steps[-1], index, record.message)
                break
            if stop:
                break
        if stop:
            break

    if verify == "end" and original_outputs is not None:
        t_final = time.perf_counter()
        final_outputs = OrtModel(model, threads=threads, probes=True).run_all(batches)
        verify_seconds += time.perf_counter() - t_final
        report.drift = compare_outputs(original_outputs, final_outputs, scales)
        budget = _pipeline_budget(passes, model, tolerances, noise)
        problems = violations(report.drift, budget)
        if problems:
            report.failures.append(f"final check failed: {'; '.join(problems)}")
    elif original_outputs is not None and previous_outputs is not None:
        report.drift = compare_outputs(original_outputs, previous_outputs, scales)
    report.final = _last_cost(report)
    report.verify_seconds = verify_seconds
    report.seconds = time.perf_counter() - start
    if verify == "end" and report.failures:
        raise PassFailedError(report.failures[-1])
    return Result(model, report)


class _Schedule:
    """Yields the passes to run; a :class:`Fixpoint` group repeats while a round changed."""

    def __init__(self, items: list) -> None:
        self.items = items
        self.changed = False

    def __iter__(self):
        for item in self.items:
            if not isinstance(item, Fixpoint):
                yield item
                continue
            for round_index in range(MAX_FIXPOINT_ROUNDS):
                outer, self.changed = self.changed, False
                yield from item.passes
                round_changed, self.changed = self.changed, outer or self.changed
                if not round_changed:
                    break
                logger.info("%s: round %d changed the model", item.name, round_index + 1)


def _last_cost(report: Report) -> ModelCost:
    if report.records:
        return report.records[-1].cost
    return report.canonicalize.cost if report.canonicalize else report.original


def _pipeline_budget(
    passes: Sequence[Pass], model: ir.Model, tolerances: Mapping[str, float], noise: float = 0.0
) -> Tolerance:
    """Sum of per-pass relative bounds (the triangle inequality), min of cosine bounds."""
    rel, cosines = 0.0, []
    for pass_ in passes:
        tol = tolerance_for(pass_.contract, model, tolerances.get(pass_.name), noise)
        rel += tol.rel_error if tol.rel_error is not None else math.inf
        if tol.min_cosine is not None:
            cosines.append(tol.min_cosine)
    return Tolerance(rel, min(cosines) if cosines else None)


def _check_structure(model: ir.Model, name: str, what: str) -> None:
    if what == "the input model":
        try:
            check_input_model(model)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from exc
    try:
        check_ir_invariants(model)
        proto, _ = weightless_proto(model)
        check_structure(proto)
    except Exception as exc:
        raise InputError(
            f"{name}: {what} is not a valid ONNX model ({_first_line(exc)}); fix or re-export it"
        ) from exc


def _check_pass(
    model: ir.Model,
    verify: str,
    batches: list[dict[str, np.ndarray]],
    previous_outputs: list[dict[str, np.ndarray]] | None,
    original_outputs: list[dict[str, np.ndarray]] | None,
    tolerance: Tolerance,
    record: PassRecord,
    threads: int,
    scales: Mapping[str, OutputInfo],
) -> tuple[str | None, list[dict[str, np.ndarray]] | None]:
    """Structural then numeric check; returns (failure or None, new outputs)."""
    try:
        check_ir_invariants(model)
        proto, _ = weightless_proto(model)
        check_structure(proto)
    except (StructureError, Exception) as exc:
        return f"broke the model structure ({_first_line(exc)})", previous_outputs
    if verify != "each" or previous_outputs is None:
        return None, previous_outputs
    try:
        outputs = OrtModel(model, threads=threads, probes=True).run_all(batches)
    except Exception as exc:
        return f"made a model onnxruntime cannot run ({_first_line(exc)})", previous_outputs
    before, after = _graph_outputs(previous_outputs[0]), _graph_outputs(outputs[0])
    if before != after:
        return f"changed the model outputs from {before} to {after}", previous_outputs
    record.vs_previous = compare_outputs(previous_outputs, outputs, scales)
    if original_outputs is not None:
        record.vs_original = compare_outputs(original_outputs, outputs, scales)
    problems = violations(record.vs_previous, tolerance)
    if problems:
        return f"broke its {record.contract} contract: {'; '.join(problems)}", previous_outputs
    return None, outputs


def _with_opset_upgrade(pass_: Pass, model: ir.Model) -> list[Pass]:
    from lightir.passes.upgrade_opset import UpgradeOpset, opset_of

    needed = getattr(pass_, "min_opset", None)
    if needed is None or opset_of(model) >= needed:
        return [pass_]
    if needed > _newest_opset():
        return []
    return [UpgradeOpset(UpgradeOpset.Options(version=needed)), pass_]


def _newest_opset() -> int:
    import onnx

    return onnx.defs.onnx_opset_version()


def _declined_for_opset(report: Report, pass_: Pass, index: int, reason: str) -> None:
    reason = reason or "the opset upgrade did not happen"
    record = PassRecord.begin(index, pass_, _last_cost(report))
    record.status = "declined"
    record.message = (
        f"pass '{pass_.name}' (#{index}) declined: it needs opset {pass_.min_opset} and {reason}"
    )
    report.records.append(record)


def _graph_outputs(outputs: Mapping[str, np.ndarray]) -> list[str]:
    return [name for name in outputs if PROBE_MARK not in name]


def _reference_outputs(
    model: ir.Model, batches: list[dict[str, np.ndarray]], name: str, threads: int
) -> list[dict[str, np.ndarray]]:
    try:
        return OrtModel(model, threads=threads, probes=True).run_all(batches)
    except Exception as exc:
        raise InputError(
            f"{name}: onnxruntime cannot run the input model "
            f"({_first_line(exc)}); fix the model or use --verify structural"
        ) from exc


def _check_canonical(
    source: ir.Model,
    model: ir.Model,
    done: dict[str, Any],
    verify: str,
    batches: list[dict[str, np.ndarray]],
    scales: Mapping[str, OutputInfo],
    name: str,
    threads: int,
) -> tuple[PassRecord, ir.Model, list[dict[str, np.ndarray]] | None]:
    """Verify import canonicalization like an exact pass; keep the input model if it fails.

    The reference is the model as given; when onnxruntime cannot run that one (a dim stored
    as -1, say), the canonical form is the reference and the record says so.
    """
    record = PassRecord(0, "canonicalize", "exact", "changed", 0.0, 0.0, None, stats=done)
    t_verify = time.perf_counter()
    reference = None
    if verify != "structural":
        try:
            reference = OrtModel(source, threads=threads, probes=True).run_all(batches)
        except Exception as exc:
            record.message = (
                f"onnxruntime cannot run the model as given ({_first_line(exc)}); "
                "its canonical form is the reference"
            )
    tolerance = tolerance_for(Contract.exact(), model)
    record.tolerance = tolerance.describe()
    failure, outputs = _check_pass(
        model, "each", batches, reference, reference, tolerance, record, threads, scales
    )
    if reference is None and failure is None and verify != "structural":
        outputs = _reference_outputs(model, batches, name, threads)
    record.verify_seconds = time.perf_counter() - t_verify
    if failure is not None:
        record.status = "rolled-back"
        record.message = f"import canonicalization {failure}; rolled back (a lightir bug)"
        if reference is None:
            raise InputError(f"{name}: {record.message}")
        return record, source, reference
    return record, model, outputs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
