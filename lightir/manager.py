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

import contextvars
import copy
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from lightir import io as lightir_io
from lightir import metrics, registry
from lightir.analysis.cost import ModelCost, model_cost, model_profile
from lightir.bisect import bisect
from lightir.canonicalize import canonicalize
from lightir.data import (
    DEFAULT_DYNAMIC_DIM,
    LABELS_KEY,
    CalibrationData,
    InputSpec,
    concrete_shape,
    input_specs,
    synthesize,
)
from lightir.errors import BudgetUnmet, InputError, PassDeclined, PassFailedError, UsageError
from lightir.ir_util import clone_model, opset_of
from lightir.onnx_bridge import OrtModel
from lightir.pass_base import Pass, PassContext
from lightir.pipeline import (
    MAX_FIXPOINT_ROUNDS,
    Fixpoint,
    PassSpec,
    expand,
    flatten,
    format_pipeline,
    parse_pipeline,
)
from lightir.report import PassRecord, Report
from lightir.strength import selection_batches, strongest
from lightir.verify import (
    VERIFY_MODES,
    Verdict,
    Verifier,
    check_input,
    first_line,
    tolerance_for,
)

logger = logging.getLogger(__name__)

__all__ = ["VERIFY_MODES", "Instrument", "Result", "optimize"]


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


def _inputs_description(
    calibration: CalibrationData | None,
    batches: list[dict],
    specs: list[InputSpec],
    dims: Mapping[str, int],
) -> str:
    rows = sum(next(iter(b.values())).shape[0] for b in batches) if batches else 0
    source = f"calibration file {calibration.source}" if calibration else "synthesized"
    text = f"{len(batches)} batch(es), {rows} sample(s), {source}"
    preprocess = getattr(calibration, "preprocess", None)
    if preprocess is not None:
        text += f" (images preprocessed as '{preprocess[0] or 'defaults'}': {preprocess[1]})"
    if calibration is None:
        assumed = [
            f"{dim or f'{spec.name}[{axis}]'}={DEFAULT_DYNAMIC_DIM}"
            for spec in specs
            for axis, dim in enumerate(spec.shape)
            if axis > 0 and not isinstance(dim, int) and dim not in dims
        ]
        if assumed:
            text += f"; assumed {', '.join(dict.fromkeys(assumed))} (set with --dim NAME=N)"
    return text


def _check_dims(specs: list[InputSpec], dims: Mapping[str, int]) -> None:
    """Every ``--dim`` names a dynamic dim of the model."""
    names = sorted({d for spec in specs for d in spec.shape if isinstance(d, str) and d})
    unknown = sorted(set(dims) - set(names))
    if unknown:
        known = f"its named dynamic dims are {', '.join(names)}" if names else "it has none"
        raise UsageError(f"--dim {unknown[0]}: the model has no dynamic dim of that name; {known}")


VERIFY_BATCH = 8  # rows per onnxruntime run: a detector's activations for 32 pages at once are GBs


def verification_rows(rows: int) -> int:
    """Calibration rows the verifier judges on: ``metrics.MIN_HOLDOUT`` (32), held out.

    One flipped decision in 8 samples read 0.875 against a 0.9 bound (MTCNN O-Net after
    prune); in 32 it reads 0.969, and the interval says how much 32 can tell. With fewer
    than 64 rows, half of them, so the passes keep the other half to fit on; at least 2.
    """
    return max(2, min(metrics.MIN_HOLDOUT, rows // 2))


def _verification_inputs(
    specs: list[InputSpec],
    calibration: CalibrationData | None,
    samples: int | None,
    dims: Mapping[str, int] | None,
    seed: int,
) -> list[dict[str, np.ndarray]]:
    if calibration is None:
        return synthesize(specs, samples=samples or 2, dims=dict(dims or {}), seed=seed)
    samples = samples or verification_rows(calibration.rows)
    batch = min(samples, VERIFY_BATCH)
    batches = list(calibration.batches(batch_size=batch, limit=max(samples, 1)))
    if not batches:
        raise InputError(f"--calib {calibration.source}: too few samples for one batch")
    return batches


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


def _passes_of(pipeline: str | Sequence[Pass], tolerances: Mapping | None) -> tuple[list, str]:
    """The items to schedule (passes and fixpoint groups) and the pipeline's canonical text."""
    if isinstance(pipeline, str):
        specs = parse_pipeline(pipeline)
        items, text = expand(specs), format_pipeline(specs)
    else:
        items = list(pipeline)
        text = ",".join(p.name for p in items)
    unknown = sorted(set(tolerances or {}) - {p.name for p in flatten(items)})
    if unknown:
        raise UsageError(f"tolerance given for {', '.join(unknown)}, not in the pipeline")
    return items, text


def _runs_exact_steps(passes: Sequence[Pass]) -> bool:
    """Whether an exact step may run, which needs the rounding noise.

    An exact pass, or a pass whose prerequisites or opset upgrade the manager runs first
    (those are exact).
    """
    return any(p.contract.is_exact or p.prerequisites or p.min_opset for p in passes)


def bind_calibration(
    calib: str | Path | CalibrationData | None, model: ir.Model, preprocess=None
) -> CalibrationData | None:
    """``--calib`` (a .npz, an image folder or list, or data) as inputs of ``model``."""
    if calib is None:
        return None
    specs = input_specs(model)
    if isinstance(calib, CalibrationData):
        data = calib
    elif Path(calib).is_dir() or Path(calib).suffix.lower() == ".txt":
        from lightir.images import Preprocess, load_images

        if len(specs) != 1:
            raise InputError(
                f"--calib {calib}: images feed a model with one input; this one has "
                f"{len(specs)} ({', '.join(s.name for s in specs)}): give a .npz"
            )
        spec, origin = Preprocess.resolve(preprocess, model.metadata_props)
        bound = load_images(calib, specs[0], spec).bind(specs)
        # How the images became inputs: the report says so, and the result keeps it.
        bound.preprocess = (spec.text(), origin)
        return bound
    else:
        if preprocess:
            raise UsageError("--preprocess applies to --calib DIR or a list of images, not .npz")
        data = CalibrationData.from_npz(calib)
    return data.bind(specs)


def _fitting_data(calibration: CalibrationData | None, held: int):
    """The calibration samples passes may fit on.

    The first ``held`` rows, which verification and the metric judge on, are left out when
    enough remain.
    """
    if calibration is None:
        return None
    if calibration.rows >= 2 * held:
        return calibration.tail(held)
    logger.warning(
        "--calib %s has %d samples: passes and verification share them",
        calibration.source,
        calibration.rows,
    )
    return calibration


def _holdout(metric, calibration: CalibrationData | None, batches: list[dict], passes, model):
    """Rows passes must not fit on (verification's, and the metric's), and the metric check.

    Without ``metric``, a pass that wants one (:attr:`Pass.wants_metric`) gets the default
    (:func:`lightir.metrics.default_for`), checked on held-out rows like a given one.
    """
    held = sum(len(next(iter(b.values()))) for b in batches) if calibration else 0
    if metric is None and calibration is not None and any(p.wants_metric for p in passes):
        metric = metrics.default_for(model.graph.outputs[0])
    if metric is None:
        return held, _NoMetric()
    metric = metrics.resolve(metric)
    if calibration is None:
        raise UsageError(f"--metric {metric.name} needs --calib: the samples to score on")
    held = metrics.holdout_rows(calibration.rows, held)
    return held, _MetricCheck(metric, calibration, held)


class _NoMetric:
    """No ``metric``: nothing to score."""

    metric = None

    def within(self, model: ir.Model, budget: float, record: PassRecord) -> str | None:
        """Nothing to check."""
        return None

    def start(self, model: ir.Model, report: Report) -> None:
        """Nothing."""

    def finish(self, model: ir.Model, report: Report) -> None:
        """Nothing."""


class _MetricCheck:
    """The user's metric on the held-out samples: the original model, then the result."""

    def __init__(self, metric, calibration: CalibrationData, held: int) -> None:
        if metric.needs_labels and calibration.labels is None:
            raise UsageError(
                f"--metric {metric.name} needs labels: add a {LABELS_KEY} array (one label per "
                "sample) to the calibration file"
            )
        self.metric, self.data = metric, calibration.head(held)
        self.reference: dict[str, np.ndarray] = {}
        self.labels = None

    def _outputs(self, model: ir.Model) -> dict[str, np.ndarray]:
        return OrtModel(model).run_rows(list(self.data.batches(batch_size=8)))

    def start(self, model: ir.Model, report: Report) -> None:
        """Score the original (a metric that fails on it stops the run before any pass)."""
        self.reference = self._outputs(model)
        rows = len(next(iter(self.reference.values())))
        self.labels = None if self.data.labels is None else self.data.labels[:rows]
        score = self.metric.score(self.reference, self.reference, self.labels)
        report.metric = {"name": self.metric.name, "original": score.as_dict()}

    def within(self, model: ir.Model, budget: float, record: PassRecord) -> str | None:
        """Why ``model`` breaks a metric ``budget`` on the held-out samples, or None.

        Broken when even the upper end of its score's 95% interval is more than ``budget``
        below the original's score; the score goes into ``record.stats["held_out"]``.
        """
        original = self.metric.score(self.reference, self.reference, self.labels)
        score = self.metric.score(self._outputs(model), self.reference, self.labels)
        record.stats["held_out"] = {
            "metric": self.metric.name,
            "original": original.as_dict(),
            "result": score.as_dict(),
            "drop": original.value - score.value,
        }
        if score.high < original.value - budget:
            return (
                f"dropped {self.metric.name} from {original.value:.4f} to {score.describe()} "
                f"on {score.samples} held-out samples, beyond its budget of {budget:g}"
            )
        return None

    def finish(self, model: ir.Model, report: Report) -> None:
        """Score the result and the drop from the original."""
        score = self.metric.score(self._outputs(model), self.reference, self.labels)
        report.metric["final"] = score.as_dict()
        report.metric["drop"] = report.metric["original"]["value"] - score.value


def _cost_shapes(specs, calibration, batches, dims) -> dict[str, tuple]:
    """Input shapes for per-sample costs: a dynamic batch dim counts as 1."""
    if calibration is None:
        return {spec.name: concrete_shape(spec, 1, dict(dims or {})) for spec in specs}
    return {
        name: (1, *array.shape[1:]) if specs[0].dynamic_batch else array.shape
        for name, array in batches[0].items()
    }


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
    metric: str | Callable | None = None,
    preprocess: str | None = None,
) -> Result:
    """Run ``pipeline`` on a model and check every pass.

    Args:
        model_or_path: an ``onnx_ir.Model`` (left unchanged: the passes work on a copy that
            shares its weights), a ``.onnx`` path, or ``"zoo:NAME"``.
        pipeline: pipeline text (``"fold-bn,cleanup"``) or pass instances.
        calib: calibration ``.npz`` path or data, or a folder (or list file) of images
            (:mod:`lightir.images`); also used as verification inputs.
        verify: ``"each"`` (structure and numbers after every pass, default), ``"end"``
            (structure after every pass, numbers once at the end), ``"structural"`` (no
            onnxruntime runs).
        keep_going: after a pass is rolled back, run the remaining passes.
        samples: verification samples (run 8 at a time when the batch dim is dynamic). Default:
            2 synthesized; with ``calib``, 32 of its rows (half of them when it has fewer
            than 64, at least 2), which the passes do not fit on (:func:`verification_rows`).
        dims: values for named dynamic dims (``{"batch": 4}``).
        seed: seed of synthesized inputs.
        tolerances: per pass name, a relative-error bound overriding its contract's.
        instruments: hooks called around each pass.
        threads: onnxruntime intra-op threads for verification (0: its default).
        metric: a :mod:`lightir.metrics` name, ``module:function`` or callable, scored on
            held-out calibration samples, original and result (``report.metric``).
        preprocess: how images of ``calib`` become the input (``"resize=256,mean=..."``,
            :class:`lightir.images.Preprocess`).

    Returns:
        :class:`Result`; ``result.report.ok`` is false when a pass was rolled back.

    Raises:
        InputError, UsageError: bad model, pipeline, calibration data or a pass's
            precondition (:meth:`Pass.requires`), before any onnxruntime run.
        PassFailedError: only with ``verify="end"``, when the final check fails.

    """
    if verify not in VERIFY_MODES:
        raise UsageError(f"verify={verify!r}: use one of {', '.join(VERIFY_MODES)}")
    if samples is not None and samples < 1:
        raise UsageError(f"samples={samples}: give at least 1")
    start = time.perf_counter()
    items, pipeline_text = _passes_of(pipeline, tolerances)
    passes = flatten(items)

    source, name = resolve_model(model_or_path)
    check_input(source, name)
    model = clone_model(source)
    canonical = canonicalize(model)
    calibration = bind_calibration(calib, model, preprocess)
    _check_preconditions(passes, model, calibration)
    specs = input_specs(model)
    _check_dims(specs, dims or {})
    batches = _verification_inputs(specs, calibration, samples, dims, seed)
    held, check = _holdout(metric, calibration, batches, passes, model)
    shapes = _cost_shapes(specs, calibration, batches, dims)
    verifier = Verifier(batches, mode=verify, threads=threads, tolerances=tolerances, name=name)
    exact = _runs_exact_steps(passes)
    model, canonical_verdict = verifier.start(
        source, model, bool(canonical), exact=exact, seed=seed
    )
    # Passes replace weights; the input's own must not stay alive beside them (ResNet-50:
    # 100 MB more through a whole compress search).
    del source
    report = Report(
        model=name,
        pipeline=pipeline_text,
        verify=verify,
        inputs=_inputs_description(calibration, batches, specs, dims or {}),
        # Counted on the canonical form: weights held in Constant nodes count as parameters.
        original=model_cost(model, shapes),
        rounding_noise=verifier.noise,
    )
    report.profile["before"] = model_profile(model, shapes)
    if canonical_verdict is not None:
        report.canonicalize = _canonical_record(canonical_verdict, canonical, report)
    check.start(model, report)
    run = _Run(report, verifier, instruments, _fitting_data(calibration, held), shapes, check)
    schedule = _Schedule(items)
    for scheduled in schedule:
        model, failed = run.step(scheduled, model)
        schedule.changed |= run.changed
        if failed and not keep_going:
            report.skipped = schedule.remaining()
            break

    report.drift, failure = verifier.finish(model, passes)
    if failure:
        report.failures.append(failure)
    report.final = _last_cost(report)
    report.profile["after"] = model_profile(model, shapes)
    check.finish(model, report)
    report.verify_seconds = verifier.seconds
    report.seconds = time.perf_counter() - start
    if verify == "end" and report.failures:
        raise PassFailedError(report.failures[-1])
    stamp_provenance(model, report)
    preprocess = getattr(calibration, "preprocess", None)
    if preprocess is not None and preprocess[0]:
        # The result says how to feed it; the next run on it reads this back.
        model.metadata_props["lightir.preprocess"] = preprocess[0]
    return Result(model, report)


PROVENANCE_KEY = "lightir.provenance"


def stamp_provenance(model: ir.Model, report: Report) -> None:
    """Write what was done into the model's ``metadata_props`` (Netron shows them).

    ``lightir.version``, ``lightir.pipeline`` and ``lightir.provenance`` (the JSON of
    :meth:`Report.provenance`); a model optimized before keeps that record under
    ``previous``. Other metadata (an exporter's) is left as it is.
    """
    provenance = report.provenance()
    earlier = model.metadata_props.get(PROVENANCE_KEY)
    if earlier:
        try:
            provenance["previous"] = json.loads(earlier)
        except ValueError:
            provenance["previous"] = earlier
    model.metadata_props["lightir.version"] = provenance["version"]
    model.metadata_props["lightir.pipeline"] = report.pipeline
    model.metadata_props[PROVENANCE_KEY] = json.dumps(provenance, separators=(",", ":"))


def _check_preconditions(
    passes: Sequence[Pass], model: ir.Model, calibration: CalibrationData | None
) -> None:
    """Every pass's context preconditions, before any work: a UsageError stops the run."""
    context = PassContext(calibration)
    for pass_ in passes:
        try:
            pass_.requires(model, context)
        except PassDeclined:
            pass  # about this model as it is now; checked again when the pass's turn comes


def _canonical_record(verdict: Verdict, done: dict[str, Any], report: Report) -> PassRecord:
    record = PassRecord(0, "canonicalize", "exact", "changed", 0.0, verdict.seconds, None)
    record.stats, record.cost, record.tolerance = done, report.original, verdict.tolerance
    record.vs_previous, record.vs_original = verdict.vs_previous, verdict.vs_original
    record.message = verdict.note
    if not verdict.accepted:
        record.status = "rolled-back"
        record.message = f"import canonicalization {verdict.failure}; rolled back (a lightir bug)"
        report.failures.append(record.message)
    return record


class _Run:
    """The passes of one run: each step is snapshot, run, verdict, accept or roll back, record."""

    def __init__(self, report, verifier, instruments, calibration, shapes, check) -> None:
        self.report, self.verifier, self.instruments = report, verifier, instruments
        self.calibration, self.shapes, self.check = calibration, shapes, check
        self.index = 0
        self.changed = False
        self.done: set[str] = set()  # passes accepted so far (for prerequisites)

    def step(self, pass_: Pass, model: ir.Model) -> tuple[ir.Model, bool]:
        """Run ``pass_`` and the steps it needs first; returns the model and whether one failed."""
        self.changed = False
        steps, reason = self._steps(pass_, model)
        if len(steps) > 1:
            try:  # a pass that declines the model as it is needs no steps before it
                pass_.requires(model, PassContext(self.calibration))
            except PassDeclined as exc:
                self._decline(pass_, str(exc))
                return model, False
        for step in steps:
            model, record = self._run_one(step, model)
            if step is not pass_ and record.status in ("declined", "rolled-back"):
                need = f"opset {pass_.min_opset}" if step.name == "upgrade-opset" else step.name
                self._decline(pass_, f"it needs {need} and {record.message}")
                return model, record.status == "rolled-back"
            if record.status == "rolled-back":
                return model, True
        if reason:
            self._decline(pass_, reason)
        return model, False

    def _steps(self, pass_: Pass, model: ir.Model) -> tuple[list[Pass], str]:
        """The prerequisites not yet run, an opset upgrade when needed, then the pass."""
        steps = []
        for name in pass_.prerequisites:
            if name not in self.done:
                required = registry.get_pass(name)
                if required is None:
                    return [], f"its prerequisite pass {name!r} is not registered"
                steps.append(required())
        needed = pass_.min_opset
        if needed is not None and opset_of(model) < needed:
            newest = onnx.defs.onnx_opset_version()
            if needed > newest:
                return (
                    [],
                    f"it needs opset {needed} and the installed onnx knows opsets up to {newest}",
                )
            upgrade = registry.get_pass("upgrade-opset")
            steps.append(upgrade(upgrade.Options(version=needed)))
        return [*steps, pass_], ""

    def _strongest(self, pass_: Pass, model: ir.Model) -> tuple[Pass, dict]:
        """The pass at its strongest setting that meets its budget (:mod:`lightir.strength`)."""
        verifier = self.verifier
        batches = selection_batches(self.calibration, verifier.batches)
        override = verifier.tolerances.get(pass_.name)
        tolerance = tolerance_for(pass_.contract, model, override, verifier.noise)
        return strongest(pass_, model, batches, tolerance, verifier.scales, self.calibration)

    def _decline(self, pass_: Pass, reason: str) -> None:
        self.index += 1
        record = PassRecord.begin(self.index, pass_, _last_cost(self.report))
        record.status = "declined"
        record.message = f"pass '{pass_.name}' (#{self.index}) declined: {reason}"
        self.report.records.append(record)

    def _run_one(self, pass_: Pass, model: ir.Model) -> tuple[ir.Model, PassRecord]:
        self.index += 1
        for instrument in self.instruments:
            instrument.before_pass(self.index, pass_, model)
        snapshot = clone_model(model)
        context = PassContext(self.calibration, self.check.metric)
        record = PassRecord.begin(self.index, pass_, self.report.original)
        t_pass = time.perf_counter()
        failure = declined = None
        modified, searched, fallbacks = False, None, []
        try:
            pass_.requires(model, context)
            if pass_.searches_strength:
                pass_, searched = self._strongest(pass_, model)
            result = pass_.run(model, context)
            if result is None or not hasattr(result, "modified"):
                raise TypeError(f"run() returned {result!r}, not a PassResult")
            # A pass may hand back a new model object (graphsurgeon passes do).
            model, modified, record.stats = result.model, result.modified, dict(result.stats)
            fallbacks = list(getattr(result, "fallbacks", ()))
            if searched is not None:
                record.stats["strength"] = searched
        except PassDeclined as exc:
            declined = str(exc)
            record.stats.update(exc.stats)
            if isinstance(exc, BudgetUnmet):
                record.failure = "budget"
        except Exception as exc:
            logger.debug("pass %s raised", pass_.name, exc_info=True)
            failure, record.failure, modified = (
                f"raised {type(exc).__name__}: {first_line(exc)}",
                "raised",
                True,
            )
        record.seconds = time.perf_counter() - t_pass
        record.declines = list(context.declines)
        if failure is None and declined is None and modified:
            verdict = self.verifier.check(model, pass_)
            record.tolerance, record.verify_seconds = verdict.tolerance, verdict.seconds
            record.vs_previous, record.vs_original = verdict.vs_previous, verdict.vs_original
            accepted, budget = verdict.accepted, pass_.metric_budget()
            if accepted and budget is not None:
                broken = self.check.within(model, budget, record)
                held = record.stats.get("held_out")
                if fallbacks and (broken or _over_budget(held, budget)):
                    model, verdict, broken = self._fall_back(
                        pass_, fallbacks, budget, record, model, verdict, broken
                    )
                if broken:
                    accepted, failure, record.failure = False, broken, "contract"
            if accepted:
                self.verifier.accept(verdict)
            elif failure is None:
                failure, record.failure = verdict.failure, verdict.kind
        where = f"pass '{pass_.name}' (#{self.index})"
        if declined is not None:
            model, record.status, record.message = (
                snapshot,
                "declined",
                f"{where} declined: {declined}",
            )
        elif failure is not None:
            model, record.status = snapshot, "rolled-back"
            record.message = f"{where} {failure}; rolled back"
            if record.failure in BISECTED and pass_.contract.kind == "exact":
                record.message += self._bisect(pass_, snapshot, record)
            self.report.failures.append(record.message)
        else:
            record.status = "changed" if modified else "unchanged"
            if not modified:
                record.message = _why_unchanged(pass_, record.declines)
            self.changed |= modified
            self.done.add(pass_.name)
        record.cost = model_cost(model, self.shapes) if modified else _last_cost(self.report)
        self.report.records.append(record)
        for instrument in self.instruments:
            instrument.after_pass(self.index, pass_, model, record)
        return model, record

    def _fall_back(self, pass_, fallbacks, budget, record, model, verdict, broken):
        """Try a lossy pass's safer answers when its own looks over budget on the held-out rows.

        The held-out rows are the one unbiased look at the pass's answer: a search picked it
        as the best of many on its own samples, so its drop there is optimistic. When the
        drop measured on the held-out rows is over the budget (even if within the score's
        interval, which alone decides a rollback), the safer answers are tried in order and
        the first whose held-out drop is within the budget, and that passes the verifier,
        is kept. Failing that, the pass's own answer is kept if it is within the interval,
        else the first safer answer that is, else nothing. ``record.stats["fallback"]``
        lists what was tried: the held-out rows have then chosen among up to
        ``1 + MAX_FALLBACKS`` models, so the kept one's held-out figure is somewhat
        optimistic. A safer answer whose ``build`` raises :class:`PassDeclined` is withdrawn
        (listed with the reason, not tried). Returns the model, its verdict and why it breaks
        the budget (or None).
        """
        answer_held = record.stats.get("held_out")
        tried = [{"label": "the pass's answer", "held_out": answer_held}]
        within_interval = None  # the first safer answer that only the interval lets through
        for fallback in fallbacks[:MAX_FALLBACKS]:
            try:
                candidate = fallback.build()
            except PassDeclined as exc:  # the pass withdrew it (e.g. not faster after all)
                tried.append({"label": fallback.label, "withdrawn": str(exc)})
                continue
            trial = self.verifier.check(candidate, pass_)
            why = trial.failure if not trial.accepted else None
            if why is None:
                why = self.check.within(candidate, budget, record)
            held = record.stats.get("held_out")
            tried.append({"label": fallback.label, "held_out": held})
            if why is None and not _over_budget(held, budget):
                return self._keep(pass_, fallback, candidate, trial, record, tried, broken)
            if why is None and within_interval is None:
                within_interval = fallback, candidate, trial, held
            else:
                del candidate
        record.stats["held_out"] = answer_held
        if broken is None:
            record.stats["fallback"] = {"kept": None, "tried": tried}
            return model, verdict, None
        if within_interval is not None:
            fallback, candidate, trial, held = within_interval
            record.stats["held_out"] = held
            return self._keep(pass_, fallback, candidate, trial, record, tried, broken)
        record.stats["fallback"] = {"kept": None, "tried": tried}
        offered = len(tried) - 1
        return model, verdict, f"{broken} (as did the {offered} safer answer(s) it offered)"

    @staticmethod
    def _keep(pass_, fallback, candidate, trial, record, tried, broken):
        """Keep a safer answer: its stats and verdict replace the pass's answer's."""
        record.stats.update(fallback.stats)
        record.stats["fallback"] = {"kept": fallback.label, "tried": tried}
        record.tolerance, record.verify_seconds = trial.tolerance, trial.seconds
        record.vs_previous, record.vs_original = trial.vs_previous, trial.vs_original
        drop = tried[0]["held_out"]["drop"] if tried[0]["held_out"] else None
        logger.warning(
            "%s: its answer %s; kept the safer %s",
            pass_.name,
            broken or f"lost {drop:.4f} of the metric on the held-out samples",
            fallback.label,
        )
        return candidate, trial, None

    def _bisect(self, pass_: Pass, snapshot: ir.Model, record: PassRecord) -> str:
        """Name the rewrite that broke the exact pass (``lightir.bisect``); a message tail."""
        if _BISECTING.get():
            return ""  # a reproducer being checked: no bisection inside the bisection
        started = time.perf_counter()
        token = _BISECTING.set(True)
        try:
            found = bisect(
                pass_,
                snapshot,
                lambda: PassContext(self.calibration, self.check.metric),
                lambda trial: self.verifier.check(trial, pass_).failure,
                lambda candidate: _fails_alone(pass_, candidate),
            )
        except Exception as exc:  # noqa: BLE001 - the diagnosis must not hide the failure
            logger.debug("bisection of %s raised", pass_.name, exc_info=True)
            record.stats["bisect"] = {"error": f"{type(exc).__name__}: {first_line(exc)}"}
            return f" (bisection failed: {first_line(exc)})"
        finally:
            _BISECTING.reset(token)
        record.stats["bisect"] = {
            **found.as_dict(),
            "pass": _pass_text(pass_),
            "seconds": round(time.perf_counter() - started, 3),
        }
        record.reproducer = found.reproducer
        return f"; {found.describe()}"


def _pass_text(pass_: Pass) -> str:
    """The pipeline text that runs ``pass_`` with the options it was given."""
    options = getattr(pass_, "options", None)
    given = {key: getattr(options, key) for key in sorted(pass_.given) if hasattr(options, key)}
    return str(PassSpec(pass_.name, given))


def _over_budget(held_out: dict | None, budget: float) -> bool:
    """Whether the drop measured on the held-out rows (its point estimate) exceeds ``budget``."""
    return held_out is not None and held_out["drop"] > budget + 1e-12


def _fails_alone(pass_: Pass, model: ir.Model) -> bool:
    """Whether ``pass_``, run alone on ``model`` and verified on synthesized inputs, fails."""
    try:
        result = optimize(model, [copy.copy(pass_)], verify="each")
    except Exception:  # noqa: BLE001 - a candidate the manager refuses reproduces nothing
        logger.debug("reproducer check raised", exc_info=True)
        return False
    return any(r.status == "rolled-back" for r in result.report.records)


# Safer answers of a lossy pass tried on the held-out samples before it is rolled back: each
# is a look at those samples, so they are few.
MAX_FALLBACKS = 3
# Verifier failures a wrong rewrite causes (not "raised": the pass itself failed).
BISECTED = ("contract", "outputs", "structure", "runtime")
_BISECTING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lightir_bisecting", default=False
)


class _Schedule:
    """Yields the passes to run; a :class:`Fixpoint` group repeats while a round changed."""

    def __init__(self, items: list) -> None:
        self.items = items
        self.changed = False
        self.position = 0

    def remaining(self) -> list[str]:
        """Names of the items after the one being run (a fixpoint group by its name)."""
        return [item.name for item in self.items[self.position + 1 :]]

    def __iter__(self):
        for position, item in enumerate(self.items):
            self.position = position
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


def _why_unchanged(pass_: Pass, declines: list[str]) -> str:
    """Why a pass that ran changed nothing: its declined matches, else what it looks for."""
    if declines:
        more = f" (and {len(declines) - 1} more; --explain lists them)" if len(declines) > 1 else ""
        return f"every match was declined: {declines[0]}{more}"
    looks_for = getattr(pass_, "looks_for", "") or pass_.summary.rstrip(".")
    return f"nothing in this model to change; it looks for: {looks_for}"


def _last_cost(report: Report) -> ModelCost:
    if report.records:
        return report.records[-1].cost
    return report.canonicalize.cost if report.canonicalize else report.original
