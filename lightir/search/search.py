"""The accuracy-budgeted search: per-layer sensitivity, a greedy path, a measured front.

1. **Sensitivity.** Every level of every unit (:mod:`.space`) is applied alone to a copy of
   the model and scored on the *probe* samples (given by the caller; compress takes them
   from its fit samples, never from the selection): the relative squared output error (which
   adds up roughly across independent changes) and the metric's drop. int8 levels are
   written on one prepared, calibrated copy, so a probe costs a Q/DQ write and a run.
2. **Path.** Starting from the unchanged model, the shared allocator
   (:func:`lightir.analysis.budget.allocate`) repeatedly takes the one next level with the
   least added error per unit of objective saved (latency from the measured table,
   AMC / NetAdapt's trade-off without the reinforcement learning), until nothing is left.
   Each prefix of that path is a candidate model, cheaper the longer it is.
3. **Front.** Prefixes are applied for real (pruning and factorization refit by least
   squares on the fit samples, int8 calibrated on them) and scored with the user's metric on
   the selection samples, which no step fits on; the longest prefix within ``max_drop`` is
   found by bisection. Every evaluated point (drop, measured whole-model latency) is kept:
   that is the front the report shows, and the answer is the fastest point within budget.
4. **Single passes.** The settings a single pass makes on every layer (``prune`` at each
   ratio, each low-rank method at each energy, ``int8``) are evaluated too, each family
   from its strongest setting down to the first within budget (bisected where time is
   short), so the answer is never slower than one of them that meets the budget on the
   selection samples; the bisection of step 3 leaves them the time they need. The fastest
   winners of different kinds (prune, low-rank, int8) are then tried together, and the best
   is extended step by step along the path.
5. **Ablation.** The best point is tried without its int8 layers, then without its
   factorizations (the kinds whose prices are least certain), and extended again from
   whichever is faster.

Latency is measured as a ratio to the original, timed round by round beside it
(:func:`lightir.search.latency.paired_ratio`): on a shared machine a model's timing moves by
tens of percent for seconds at a time, more than candidates differ.

The search stops early, keeping the best model found, on ``time_limit`` or Ctrl-C; past the
sensitivity, no candidate starts that would end after the limit at the mean time candidates
have taken.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from lightir import memory, progress
from lightir.analysis.budget import allocate
from lightir.analysis.cost import model_cost
from lightir.data import input_specs
from lightir.ir_util import clone_model
from lightir.metrics import Metric
from lightir.onnx_bridge import OrtModel
from lightir.quant.prepare import prepare_int8
from lightir.quant.qdq import write_qdq
from lightir.search.latency import (
    paired_difference,
    paired_ratio,
    session,
    timed,
)
from lightir.search.space import Space, Unit, between
from lightir.search.suffix import Suffixes

logger = logging.getLogger(__name__)

BATCH = 8  # samples per onnxruntime run: activations of a large model stay small
SENSITIVITY_SHARE = 0.6  # of the time limit
PROBE_OVERHEAD = 2.0  # a probe's cost over its run: building, applying, opening a session
EXTEND_TRIES = 10  # steps past the best prefix that may fail before the search stops
# A candidate measured within this share of the best is timed again beside it (Search._faster).
DUEL_MARGIN = 0.25
DUEL_ROUNDS = 9
# Seconds per model per round: timings over 10 ms windows spread by +-15% on a shared machine
# (PP-OCRv5's line classifier, 0.85 ms: 0.84 to 1.2 ms).
DUEL_SECONDS = 0.03
MEASURE_ROUNDS = 7  # rounds of a candidate beside the original (_measure)
# The answer is timed beside the original once more before it is handed back (Search.speedup),
# and must be at least this much faster: a lossy change that buys less is not worth its drop.
CONFIRM_ROUNDS = 15
MIN_SPEEDUP = 1.03


class _OutOfTime(Exception):
    """The sensitivity's share of the time limit is spent."""


@dataclass
class Point:
    """One evaluated candidate: a prefix of the path."""

    steps: int
    estimate: float
    measured: float
    drop: float  # on the search half of the selection samples
    score: dict
    meets: bool
    confirm_drop: float = 0.0  # on the confirmation half
    confirmed: bool = True
    model: ir.Model | None = field(default=None, repr=False)
    choice: dict[int, int] = field(default_factory=dict, repr=False)
    extra: int = 0  # steps taken past the prefix, skipping those that broke the budget
    single: str = ""  # the single-pass setting it starts from (Space.uniform), if any
    broken: str = ""  # how it breaks the pass's contract on the selection rows (Search.guard)

    def as_dict(self, unit: str) -> dict:
        """Plain dict for the report."""
        return {
            "steps": self.steps,
            "extra_steps": self.extra,
            f"estimated_{unit}": self.estimate,
            f"measured_{unit}": self.measured,
            "drop": round(self.drop, 5),
            "score": self.score,
            "meets": self.meets,
            "confirm_drop": round(self.confirm_drop, 5),
            "confirmed": self.confirmed,
            "single_pass": self.single,
            **({"breaks_contract": self.broken} if self.broken else {}),
        }


class Search:
    """One compression search on one model (see the module docstring)."""

    def __init__(
        self,
        space: Space,
        metric: Metric,
        selection,
        *,
        max_drop: float,
        time_limit: float,
        probes: int = 32,
        probe_data=None,
        guard=None,
    ) -> None:
        self.space, self.metric, self.max_drop = space, metric, max_drop
        # ``guard(outputs, reference) -> [problems]``: the pass's own contract on the
        # selection rows (compress: cosine >= 0.9 on every output). A candidate that breaks it
        # is not within budget, whatever the metric says: the user's metric may read one
        # output (MTCNN R-Net's face probability) while the verifier holds them all (its
        # boxes lost 0.85 cosine, and the answer was rolled back).
        self.guard = guard
        self.deadline = time.perf_counter() + time_limit
        self.selection = list(selection.batches(batch_size=BATCH))
        rows = sum(len(next(iter(b.values()))) for b in self.selection)
        self.labels = None if selection.labels is None else np.asarray(selection.labels)[:rows]
        # The path is bisected on the first half; the answer must also meet the budget on the
        # second (the longest prefix within budget on some samples sits at their edge).
        half = len(self.selection) // 2
        self.split = _rows(self.selection[:half]) if half else rows
        self.best: Point | None = None
        started = time.perf_counter()
        self.reference = self._outputs(space.model, self.selection)
        per_row = (time.perf_counter() - started) / max(rows, 1)
        # Probe rows: as many as ``probes``, fewer (never under a batch) when running every
        # level on them would not fit the sensitivity's share of the time (large inputs).
        levels = sum(len(u.levels) for u in space.units) or 1
        affordable = SENSITIVITY_SHARE * time_limit / (levels * per_row * PROBE_OVERHEAD)
        # The probes come from ``probe_data`` (compress passes its fit rows), not from the
        # selection: the path is ordered by what hurts the probe rows least, so probe rows
        # among the selection rows make every prefix look better there than anywhere else
        # (PP-OCRv5's line classifier: the 32 probe rows lost no answer on any prefix up to
        # step 31 of 39, the other rows 0.8-10%).
        source = selection if probe_data is None else probe_data
        count = min(probes, source.rows, max(BATCH, int(affordable) // BATCH * BATCH))
        self.probe = list(source.head(count).batches(batch_size=BATCH))
        probed = _rows(self.probe)
        self.probe_labels = None if source.labels is None else np.asarray(source.labels)[:probed]
        self.probe_reference = self._outputs(space.model, self.probe)
        # One sample, or the whole batch of a model whose batch size is fixed.
        dynamic = input_specs(space.model)[0].dynamic_batch
        self.feed = {k: v[:1] if dynamic else v for k, v in self.selection[0].items()}
        self.samples = rows
        self.probe_rows = _rows(self.probe)
        self.objective = space.table.objective
        self.interrupted = ""
        self.points: list[Point] = []
        self.path: list[tuple[int, int, float]] = []
        self.table: list[dict] = []  # the sensitivity rows
        self.shown = None  # the front's progress bar while it runs
        self.suffix_probes = 0  # probes run from cached activations
        self.reference_run = None  # the original, timed beside each candidate (_measure)
        self.reference_time = math.nan
        self._norms = None  # (a reference, its outputs' sums of squares) for _error
        self.candidate_seconds: list[float] = []  # what each evaluation took, the original's aside

    # ----------------------------------------------------------------------- measuring
    @staticmethod
    def _outputs(model: ir.Model, batches: list[dict]) -> dict[str, np.ndarray]:
        return OrtModel(model).run_rows(batches)

    def _error(self, outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
        """Relative squared error, averaged over outputs."""
        if self._norms is None or self._norms[0] is not reference:
            self._norms = (reference, {n: _squares(r) for n, r in reference.items()})
        norms = self._norms[1]
        errors = [
            _squares(outputs[name], ref) / max(norms[name], 1e-30)
            for name, ref in reference.items()
        ]
        return float(np.mean(errors))

    def _drop(self, outputs, reference, labels, interval: bool = False) -> tuple[float, dict]:
        """The metric's drop, and the score (with its interval when asked).

        A per-sample metric (the built-in ones) counts only the samples that got worse:
        samples a candidate happens to get right where the original did not would otherwise
        hide as many it gets wrong, and the search would pick the luckiest candidate
        (on PP-OCRv5's line classifier, a net gain on the selection samples was a loss of 3
        of 80 held-out answers).
        """
        drop = worse(self.metric, outputs, reference, labels)
        if not interval:
            return drop, {}
        return drop, self.metric.score(outputs, reference, labels).as_dict()

    def pooled_drop(self, point: Point) -> float:
        """``point``'s drop over all the selection samples (both halves, weighted by rows)."""
        second = self.samples - self.split
        return (point.drop * self.split + point.confirm_drop * second) / max(self.samples, 1)

    def _part(self, outputs: dict, rows: slice) -> tuple[dict, dict, np.ndarray | None]:
        """Outputs, reference and labels of some selection rows."""
        labels = None if self.labels is None else self.labels[rows]
        picked = {k: v[rows] for k, v in outputs.items()}
        return picked, {k: v[rows] for k, v in self.reference.items()}, labels

    def _measure(self, model: ir.Model) -> float:
        """The whole model's objective: latency in seconds, MACs or weight bytes."""
        if self.objective == "latency":
            # Relative to the original, timed round by round beside it: separate timings
            # seconds apart moved by more than the candidates differ (PP-OCRv5's line
            # classifier, 0.85 ms, timed at up to 1.8 ms in a slow spell). The time, not a
            # count, bounds each timing: 200 runs of a 20 us model take 4 ms, too few to
            # rank models that differ by a microsecond.
            if self.reference_run is None:
                self.reference_run = self._runner(self.space.model)
                self.reference_time = timed(
                    self.reference_run, min_runs=10, min_seconds=0.5, max_runs=1_000_000
                )
            if model is self.space.model:
                return self.reference_time
            ratio = paired_ratio(self.reference_run, self._runner(model), rounds=MEASURE_ROUNDS)
            return ratio * self.reference_time
        shapes = {k: v.shape for k, v in self.feed.items()}
        cost = model_cost(model, shapes)
        if self.objective == "bytes":
            return float(cost.bytes)
        return cost.macs / len(next(iter(self.feed.values())))  # per sample, as the table

    def speedup(self, model: ir.Model) -> float:
        """The original's time over ``model``'s, timed side by side for ``CONFIRM_ROUNDS`` rounds.

        The figure a candidate was ranked by comes from ``MEASURE_ROUNDS`` rounds among many
        candidates, so the fastest of them is the luckiest too: on PP-OCRv5's line classifier
        an svd setting measured 5% faster than the original in the search timed 2% slower
        afterwards. Only the latency objective is timed; MACs and bytes are exact counts.
        """
        if self.objective != "latency":
            return self.points[0].measured / self._measure(model)
        if self.reference_run is None:
            self._measure(self.space.model)
        ratio = paired_ratio(
            self.reference_run, self._runner(model), rounds=CONFIRM_ROUNDS, min_seconds=DUEL_SECONDS
        )
        return 1.0 / ratio

    def _runner(self, model: ir.Model):
        """A call that runs ``model`` once on the timing feed."""
        sess = session(model, self.space.table.threads)
        return lambda: sess.run(None, self.feed)

    def _faster(self, point: Point, model: ir.Model) -> bool:
        """Whether ``point`` beats the best so far; under latency, timed side by side.

        Every candidate is timed beside the original (``_measure``), but models that differ by
        a few percent need more: a candidate within ``DUEL_MARGIN`` of the best is timed
        against the best itself, round by round (digits: the same pruned model measured 0.015
        and 0.017 ms within one search), and its figure becomes the best's times that ratio.
        """
        best = self.best
        if self.objective != "latency" or best.model is None:
            return point.measured < best.measured
        if point.measured >= best.measured * (1 + DUEL_MARGIN):
            return False
        ratio = paired_ratio(
            self._runner(best.model),
            self._runner(model),
            rounds=DUEL_ROUNDS,
            min_seconds=DUEL_SECONDS,
        )
        point.measured = best.measured * ratio
        return ratio < 1.0

    def _time_left(self, candidates: int = 0) -> bool:
        """Whether there is time for ``candidates`` more evaluations (at their mean so far)."""
        spent = self.candidate_seconds
        mean = sum(spent) / len(spent) if spent else 0.0
        return time.perf_counter() + candidates * mean < self.deadline

    # ----------------------------------------------------------------------- sensitivity
    def sensitivity(self) -> None:
        """Measure every level alone on the probe samples; drop what was not measured.

        The levels that save the most are measured first; the sensitivity gets at most
        ``SENSITIVITY_SHARE`` of the time left, the front the rest.
        """
        units = self.space.units
        total = sum(len(u.levels) for u in units)
        stop = time.perf_counter() + SENSITIVITY_SHARE * (self.deadline - time.perf_counter())
        order = sorted(
            range(len(units)), key=lambda i: min((lv.delta for lv in units[i].levels), default=0)
        )
        done = 0
        prepared = in_place = None
        # Prune and low-rank probes run from the first node they touch, fed with the
        # original's values there (lightir.search.suffix); int8 probes change the model
        # before that node too (equalization) and run whole.
        suffixes = Suffixes(self.space.model, self.probe)
        touched = {
            index: [node.name for node in units[index].touches]
            for index in order
            if units[index].kind != "int8" and units[index].levels
        }
        suffixes.prepare(
            [c for c in (suffixes.cut_of(touched[i]) for i in order if i in touched) if c]
        )
        shown = progress.bar(total=total, desc="compress: sensitivity")
        try:
            for index in order:
                unit = units[index]
                for level_index, level in enumerate(unit.levels, start=1):
                    if time.perf_counter() > stop:
                        raise _OutOfTime
                    if unit.kind == "int8":
                        if prepared is None:
                            prepared = _Int8Probe(self.space)
                        model = prepared.only(unit.key)
                    else:
                        model, _ = self.space.apply({index: level_index}, probe=True)
                    if unit.kind == "int8" and self.objective == "latency":
                        # Q/DQ boundaries and layout changes depend on the neighbours: the
                        # whole model with this layer in int8 is timed, side by side with
                        # the unchanged model (the table times the layer alone, as an
                        # island).
                        if in_place is None:
                            in_place = self._runner(self.space.model)
                        # The price is the measured difference at the least favourable end
                        # of its 95% interval: a layer's int8 moves a model of a millisecond
                        # by a few microseconds, less than the timings spread on a shared
                        # machine, and a saving the timings cannot show is not counted
                        # (PP-OCRv5's line classifier: with the table's figure kept inside
                        # the interval, the path filled with int8 layers, and the best point
                        # was faster without them in three runs of four).
                        alone, half = paired_difference(in_place, self._runner(model))
                        self.space.correct(index, level_index, alone + half - level.delta)
                    outputs = None
                    if unit.kind != "int8":
                        outputs = suffixes.outputs(model, touched[index], unit.kind)
                    if outputs is None:
                        outputs = self._outputs(model, self.probe)
                    level.error = self._error(outputs, self.probe_reference)
                    level.drop, _ = self._drop(outputs, self.probe_reference, self.probe_labels)
                    done += 1
                    shown.update(1)
                    if done % 10 == 0 or done == total:
                        logger.info("compress: sensitivity %d/%d", done, total)
        except _OutOfTime:
            self.interrupted = f"time limit: sensitivity measured {done} of {total} levels"
            logger.warning("compress: %s; searching those", self.interrupted)
        except KeyboardInterrupt:
            self.interrupted = f"interrupted (Ctrl-C): sensitivity measured {done} of {total}"
            logger.warning("compress: %s; searching those", self.interrupted)
        shown.close()
        self.suffix_probes = suffixes.served
        del suffixes
        self.table = self._rows()
        for unit in units:
            unit.every = list(unit.levels)
            unit.measured = [lv for lv in unit.levels if not math.isnan(lv.error)]
            unit.levels = _useful(unit.measured)
        prepared = None  # the int8 probe's calibrated copy goes before the release
        memory.release(self.space.weight_bytes)

    def _rows(self) -> list[dict]:
        """The sensitivity table: one row per measured unit and level (useful or not)."""
        rows = []
        for unit in self.space.units:
            # The layers it changes: a channel group's producers, or the layer itself.
            layers = [
                node.name
                for node, (_, made) in unit.touches.items()
                if unit.kind != "prune" or made
            ]
            for level in unit.levels:
                if math.isnan(level.error):
                    continue
                rows.append(
                    {
                        "kind": unit.kind,
                        "unit": unit.label,
                        "layers": layers,
                        "level": level.label,
                        f"delta_{self._unit()}": level.delta * self._scale(),
                        "output_error": level.error,
                        "metric_drop": level.drop,
                    }
                )
        return rows

    # ----------------------------------------------------------------------- the path
    def plan_path(self) -> None:
        """Order every level of every unit by least error per objective saved."""
        units = [i for i, u in enumerate(self.space.units) if u.levels]
        trace: list[tuple[int, int, float]] = []

        def propose(i: int, levels: dict, current: float) -> tuple[float, float] | None:
            unit: Unit = self.space.units[i]
            now = levels[i]
            if now >= len(unit.levels):
                return None
            choice = {k: v for k, v in levels.items() if v}
            saved = -self.space.step_cost(i, now + 1, choice)
            if saved <= 0:
                return None
            before = unit.levels[now - 1].error if now else 0.0
            added = max(unit.levels[now].error - before, 0.0)
            return added / saved, current - saved

        allocate(units, self.space.base_cost(), -math.inf, propose, trace=trace)
        self.path = trace

    def choice(self, steps: int) -> dict[int, int]:
        """The levels after the first ``steps`` steps of the path."""
        levels: dict[int, int] = {}
        for unit, level, _ in self.path[:steps]:
            levels[unit] = level
        return levels

    def evaluate(
        self, steps: int, choice: dict[int, int] | None = None, extra: int = 0, single: str = ""
    ) -> Point:
        """Apply the path's first ``steps`` steps (or ``choice``) for real, score and measure."""
        started = time.perf_counter()
        choice = self.choice(steps) if choice is None else choice
        if not choice:
            model = clone_model(self.space.model)
        else:
            model, _ = self.space.apply(choice)
        outputs = self._outputs(model, self.selection)
        first, second = (slice(0, self.split), slice(self.split, None))
        drop, score = self._drop(*self._part(outputs, first), interval=True)
        confirm = self._drop(*self._part(outputs, second))[0] if self.split < self.samples else drop
        broken = self.guard(outputs, self.reference) if self.guard is not None and choice else []
        estimate = self.space.cost(choice)
        point = Point(
            steps,
            estimate,
            self._measure(model),
            drop,
            score,
            drop <= self.max_drop and not broken,
            confirm,
            confirm <= self.max_drop and not broken,
            choice=dict(choice),
            extra=extra,
            single=single,
            broken="; ".join(broken),
        )
        self.points.append(point)
        if self.shown is not None:
            self.shown.update(1)
        if point.meets and point.confirmed:
            if self.best is None or self._faster(point, model):
                if self.best is not None:
                    self.best.model = None  # one model held at a time
                point.model, self.best = model, point
        del model, outputs
        memory.release(self.space.weight_bytes)
        if choice:
            self.candidate_seconds.append(time.perf_counter() - started)
        logger.info(
            "compress: %s%s: drop %.4f (budget %.4f), %s %.4g",
            single or f"{steps} of {len(self.path)} steps",
            f" and {extra} more" if extra else "",
            drop,
            self.max_drop,
            self.objective,
            point.measured * self._scale(),
        )
        return point

    def front(self) -> Point:
        """Evaluate prefixes by bisection; the best point within budget (the original if none)."""
        # Candidates are counted, not bounded: bisection, single passes and the extension
        # stop on what they find.
        self.shown = progress.bar(desc="compress: candidates evaluated")
        try:
            return self._front()
        finally:
            self.shown.close()
            self.shown = None

    def _front(self) -> Point:
        original = self.evaluate(0)
        count = len(self.path)
        low, high = 0, count  # low meets (the original); high is the next to try
        # Bisection leaves time for the single passes' candidates (at most, each family
        # bisected): the answer must not be slower than one of them that meets the budget,
        # and where a candidate costs tens of seconds (PP-OCRv6's small recognizer, 17-36 s)
        # bisecting the path to its end left none for them.
        reserve = _reserve(self.space.families())
        converged = not count
        try:
            while count:
                if not self._time_left(1 + reserve):
                    break
                point = self.evaluate(high)
                within = point.meets and point.confirmed
                if within:
                    low = high
                else:
                    count = high  # nothing at or beyond high is taken
                if count - low <= max(1, count // 64):
                    converged = True
                    break
                high = (low + count) // 2 if not within else (low + count + 1) // 2
                if high in {p.steps for p in self.points}:
                    converged = True
                    break
            if not converged:
                self.interrupted = self.interrupted or (
                    f"time limit: the path bisected to steps {low}-{count} of {len(self.path)}, "
                    "the rest of the time left to the single passes"
                )
        except KeyboardInterrupt:
            self.interrupted = "interrupted (Ctrl-C)"
            logger.warning("compress: interrupted; keeping the best model found so far")
        try:
            self.single_passes()
            self.combine()
            self.extend()
            dropped = self.ablate()
            if dropped:
                self.extend(skip=dropped)
        except KeyboardInterrupt:
            self.interrupted = "interrupted (Ctrl-C)"
            logger.warning("compress: interrupted; keeping the best model found so far")
        return self.best if self.best is not None else original

    def single_passes(self) -> None:
        """Evaluate the settings single passes would make; per family, the strongest within budget.

        The path adds levels by their sensitivity measured alone, which misses how changes
        interact; ``prune{ratio=0.5}`` or ``spatial-svd{energy=0.7}`` on every layer may then
        be faster within budget than any prefix (MTCNN O-Net: spatial-svd at 0.7, 1.48x,
        against 1.36x). Each family (prune, each low-rank method, int8) is tried from its
        strongest setting down, stopping at the first within budget on both selection halves,
        the families with fewest settings first. Where that would not leave the families after
        it their time, the family is bisected over its settings instead (at most 3 candidates
        instead of 7; PP-OCRv6's small recognizer, 17 s a candidate). Bisection assumes a
        weaker setting never loses more, which a selection of 56 rows does not bear out (O-Net:
        spatial-svd at 0.85 broke 1 point where 0.7 met it), so it is the fallback, not the
        rule. A setting measured no faster than the best point found that breaks the budget
        ends its family: weaker settings are slower still. The gate is the measurement, not
        the table's estimate: on a model of tens of microseconds the estimates' noise adds up
        over the layers (digits: int8 on six layers estimated at 0.006 ms, measured 0.020 ms)
        and would hide a faster single pass. The best is then extended from whichever point
        won.
        """
        original = self.points[0].measured if self.points else math.inf
        families = sorted(self.space.families(), key=lambda family: len(family[2]))
        for index, (kind, method, strengths) in enumerate(families):
            later = _reserve(families[index + 1 :], families)
            linear = self._time_left(len(strengths) + later)
            low, high = 0, len(strengths)  # strongest first: [low, high) is still open
            while low < high:
                if not self._time_left(1):
                    return
                middle = low if linear else (low + high) // 2
                strength = strengths[middle]
                choice = self.space.uniform(kind, method, strength)
                if not choice:  # nothing to change at this strength, nor at weaker ones
                    high = middle
                    continue
                label = f"{method or kind}" + (f" {strength:g}" if kind != "int8" else "")
                point = self.evaluate(0, choice, single=label)
                if point.meets and point.confirmed:
                    high = middle  # a stronger one may meet it too (when bisecting)
                    continue
                bar = self.best.measured if self.best is not None else original
                if point.measured >= bar:
                    break  # weaker settings of the family are slower still
                low = middle + 1

    def combine(self) -> None:
        """Join the fastest single-pass settings within budget of different kinds.

        Each family's strongest setting within budget is a whole-model change of one kind;
        pruning every layer at 0.2 and running every layer in int8 may each cost nothing of
        the metric and together still not, and be faster than either. Where the path's
        order misleads (it adds levels by their error measured alone), its prefixes may all
        break the budget early (PP-OCRv6's small recognizer at 1 point: 45 of 90 steps lost
        17% of the lines) while the single passes meet it. Starting from the fastest kind's
        winner, each other kind's winner (one low-rank method: their layers are shared) is
        added and kept when the union stays within budget on both halves and is measured
        faster.
        """
        winners: dict[str, Point] = {}
        for point in self.points:
            if not point.single or point.extra or not point.choice:
                continue
            if not (point.meets and point.confirmed):
                continue
            if "without" in point.single or " + " in point.single:
                continue  # an ablation or a union, not one family's setting
            kind = self.space.units[next(iter(point.choice))].kind
            if kind not in winners or point.measured < winners[kind].measured:
                winners[kind] = point
        ordered = sorted(winners.values(), key=lambda point: point.measured)
        if len(ordered) < 2:
            return
        base = ordered[0]
        for other in ordered[1:]:
            if not self._time_left(1):
                return
            union = {**base.choice, **other.choice}
            point = self.evaluate(0, union, single=f"{base.single} + {other.single}")
            if point.meets and point.confirmed and point.measured < base.measured:
                base = point

    def ablate(self) -> set[str]:
        """Try the best point without its int8 layers, then without its factorizations.

        Their prices are the least certain: an int8 layer's cost depends on the Q/DQ pairs
        and layout changes around it, and a model of a millisecond moves by less than the
        timings spread (PP-OCRv5's line classifier: 17 int8 layers the table priced as
        savings made the chosen model slower than the same pruning without them). Removing a
        kind only lowers the error, so the result stays within budget unless the samples
        say otherwise; it replaces the best when it is timed faster side by side. Returns
        the kinds removed, for ``extend`` to leave out.
        """
        dropped: set[str] = set()
        for kind in ("int8", "lowrank"):
            best = self.best
            if best is None or not self._time_left(1):
                break
            kinds = {self.space.units[i].kind for i, level in best.choice.items() if level}
            if kind not in kinds or len(kinds) < 2:
                continue
            trial = {i: lv for i, lv in best.choice.items() if self.space.units[i].kind != kind}
            single = f"{best.single} without {kind}".strip()
            self.evaluate(best.steps, trial, best.extra, single=single)
            if self.best is not best:
                dropped.add(kind)
        return dropped

    def extend(self, skip: set[str] = frozenset()) -> None:
        """From the best prefix, take the later steps one at a time, skipping those that break.

        Bisection stops at the first step that breaks the budget; the steps after it, on
        other units, may not. Each is tried on top of the best choice so far and kept when the
        result stays within budget on both halves and is not measured slower; a unit whose
        step broke the budget is not tried again. At most ``EXTEND_TRIES`` failures. Steps
        of a kind in ``skip`` (what ``ablate`` removed) are not taken.
        """
        if self.best is None or not self.path:
            return
        prefix = self.best.steps
        base, extra, failures = dict(self.best.choice), 0, 0
        skipped: set[int] = set()
        for unit, level, _ in self.path[prefix:]:
            if failures >= EXTEND_TRIES or not self._time_left(1):
                break
            if unit in skipped or base.get(unit, 0) != level - 1:
                continue
            if self.space.units[unit].kind in skip:
                continue
            trial = {**base, unit: level}
            before = self.best
            point = self.evaluate(prefix, trial, extra + 1, single=before.single)
            if point.meets and point.confirmed and point.measured <= before.measured * 1.02:
                base, extra = trial, extra + 1
            else:
                skipped.add(unit)
                failures += 1

    # ----------------------------------------------------------------------- reporting
    def _unit(self) -> str:
        return {"latency": "ms", "macs": "macs", "bytes": "bytes"}[self.objective]

    def _scale(self) -> float:
        return 1e3 if self.objective == "latency" else 1.0

    def describe(self, point: Point) -> dict:
        """What the chosen point changed, per kind."""
        picked: dict[str, list[str]] = {"prune": [], "lowrank": [], "int8": []}
        for unit_index, level in point.choice.items():
            unit = self.space.units[unit_index]
            picked[unit.kind].append(f"{unit.label}: {unit.levels[level - 1].label}")
        return picked

    def front_rows(self) -> list[dict]:
        """Every evaluated point, sorted by steps."""
        unit, scale = self._unit(), self._scale()
        rows = []
        for point in sorted(self.points, key=lambda p: (p.steps, p.extra)):
            row = point.as_dict(unit)
            row[f"estimated_{unit}"] = round(row[f"estimated_{unit}"] * scale, 4)
            row[f"measured_{unit}"] = round(row[f"measured_{unit}"] * scale, 4)
            rows.append(row)
        return rows


def worse(metric: Metric, outputs, reference, labels) -> float:
    """The metric's drop from ``reference`` to ``outputs``, counting only what got worse.

    Per sample for a per-sample metric (a sample that got better does not offset one that got
    worse); the plain drop of the metric's value otherwise.
    """
    after = metric.samples(outputs, reference, labels)
    if after is not None:
        before = metric.samples(reference, reference, labels)
        return float(np.clip(before - after, 0.0, None).mean())
    return metric.value(reference, reference, labels) - metric.value(outputs, reference, labels)


class _Int8Probe:
    """The model prepared and calibrated once for int8; each probe quantizes one layer."""

    def __init__(self, space: Space) -> None:
        self.model = clone_model(space.model)
        self.plan = prepare_int8(self.model, space.fit)
        self.fit = space.fit

    def only(self, name: str) -> ir.Model:
        trial = clone_model(self.model)
        twins = dict(zip(self.model.graph, trial.graph))
        nodes = [n for n in self.plan.nodes if n.name == name]
        chosen = set(nodes) | (
            between(self.plan.nodes, set(nodes)) - set(self.plan.mixed_range_concats())
        )
        write_qdq(
            trial,
            self.plan,
            {twins[n] for n in chosen},
            reduce_range=False,
            bias_correct=True,
            context=self.fit,
        )
        return trial


SQUARES_BLOCK = 1 << 20  # elements per block summed in float64


def _squares(array: np.ndarray, minus: np.ndarray | None = None) -> float:
    """The sum of squares of ``array`` (less ``minus``), in float64 a block at a time.

    A recognizer's output is large (PP-OCRv6 small: 18710 characters a step):
    whole float64 copies of it and of the reference made the error a second per probe.
    """
    flat = array.reshape(-1)
    other = None if minus is None else minus.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, SQUARES_BLOCK):
        block = flat[start : start + SQUARES_BLOCK].astype(np.float64)
        if other is not None:
            block -= other[start : start + SQUARES_BLOCK]
        total += float(np.dot(block, block))
    return total


def _reserve(families: list, every: list | None = None) -> int:
    """Candidates the single passes of ``families`` need at most, bisected, and ``combine``.

    ``combine`` tries one union per kind of ``every`` family (``families`` by default), less one.
    """
    kinds = {kind for kind, _, _ in (families if every is None else every)}
    return sum(_bisection_tries(len(s)) for _, _, s in families) + max(len(kinds) - 1, 0)


def _bisection_tries(settings: int) -> int:
    """Candidates a bisection over ``settings`` ordered settings evaluates at most."""
    return math.ceil(math.log2(settings + 1)) if settings else 0


def _rows(batches: list[dict]) -> int:
    return sum(len(next(iter(b.values()))) for b in batches)


def _useful(levels: list) -> list:
    """Levels sorted by objective; one that another saves more than at no more error goes."""
    levels = sorted(levels, key=lambda lv: -lv.delta)
    kept = []
    for i, level in enumerate(levels):
        if level.delta >= 0:
            continue
        if any(other.error <= level.error for other in levels[i + 1 :]):
            continue  # a later level saves more for no more error
        kept.append(level)
    return kept
