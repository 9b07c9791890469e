"""MetaSchedule tuning with a persistent database (``--tune N --tuning-db DIR``).

* Tasks are extracted from the fused module (Relax's "zero" pipeline), as MetaSchedule keys
  its database on fused TIR functions.
* Only tasks the database has no record for are tuned, heaviest first (FLOPs times how many
  times the model calls them), so a re-run with a warm database compiles without tuning, and
  models that share workloads share records.
* Records are committed to ``DIR`` as they are measured (MetaSchedule's JSON database). Ctrl-C
  stops after the batch in flight and raises :class:`TuningInterrupted`; the records stay.
* A time budget stops tuning after the batch in flight, and so does a goal (onnxruntime's
  time for the model): once every task has a measured kernel and their times, each times
  its calls, add up to it (:class:`_Budget`). The evolutionary search is sized to the trials
  a task gets (:func:`search_sizes`).
* The builder compiles candidates with a build function that skips the import of
  ``tvm.s_tir.tensor_intrin`` the default one does (about 40 s on this machine, in a worker
  pool re-created per batch: every candidate timed out at 30 s; see ../shared/TVM-NOTES.md).

Needs ``lightir[tune]`` (xgboost-cpu for the cost model, psutil, cloudpickle).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lightir.errors import LightirError


def fast_build(mod, target, _params):
    """MetaSchedule build function without the tensor-intrinsics import (module docstring)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


@dataclass
class TuningStats:
    """What one tuning call did."""

    tasks: int = 0
    already_tuned: int = 0
    tuned_now: list[str] = field(default_factory=list)
    trials: int = 0
    measured_now: int = 0  # candidates measured by this call
    stopped: str = ""  # why tuning ended before its trials: "time" or "goal"
    estimate: float | None = None  # seconds: sum over tasks of best kernel time x calls
    search: dict = field(default_factory=dict)  # the evolutionary search's sizes


def tune(
    fused_mod,
    target,
    database_dir: str,
    trials: int,
    progress: Callable[[str], None] | None = None,
    rpc=None,
    search: dict | None = None,
    max_seconds: float | None = None,
    goal_seconds: float | None = None,
    again: bool = False,
) -> tuple[object, TuningStats]:
    """Tune the tasks of ``fused_mod`` missing from ``database_dir``; return (database, stats).

    ``progress`` gets one line per measured batch (task, trials so far, best time); MetaSchedule's
    own logs go to ``database_dir/logs`` only. ``rpc`` (a :class:`lightir.lowering.rpc.
    RPCTracker`) measures on the tracker's servers instead of this machine. ``search``
    overrides the sizes of MetaSchedule's evolutionary search (default:
    :func:`search_sizes`). Tuning stops after the batch in flight once ``max_seconds`` have
    passed, or once every task has a measured kernel and the sum of the best kernel times
    (times the calls of each) is at most ``goal_seconds`` (onnxruntime's time for the model).
    ``again`` tunes every task on, from the records it has, instead of only those without.
    """
    from tvm.s_tir import meta_schedule as ms

    started = time.perf_counter()
    os.makedirs(database_dir, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=database_dir)
    tasks = ms.relax_integration.extract_tasks(fused_mod, target)
    stats = TuningStats(tasks=len(tasks))
    missing = [t for t in tasks if not _tuned(database, t, target)]
    stats.already_tuned = len(tasks) - len(missing)
    if again:
        missing = list(tasks)
    if not trials or not missing:
        return database, stats
    missing.sort(key=lambda t: -_flops(t) * t.weight)
    per_task = max(1, trials // len(missing))
    stats.search = dict(search_sizes(per_task) if search is None else search)
    with _x86_intrinsics_only():
        contexts, weights = _tune_contexts(missing, database_dir, stats.search)
    cores = max(1, (os.cpu_count() or 1))
    names = [t.task_name for t in missing]
    state = _Interrupt()
    budget = _Budget(
        weights=[float(w) for w in weights],
        tuned_seconds=sum(
            _best_seconds(database, t, target) * t.weight for t in tasks if t not in missing
        ),
        max_seconds=max_seconds,
        goal_seconds=goal_seconds,
        started=started,
        # Tuning on: each task's best so far counts from the start.
        best={i: t for i, t in enumerate(_best_seconds(database, m, target) for m in missing) if t}
        if again
        else {},
    )
    callbacks = [
        *ms.measure_callback.MeasureCallback.create("default"),
        _batch_callback(names, min(trials, per_task * len(names)), progress, state, budget),
    ]
    console = logging.getLogger("tvm.s_tir.meta_schedule")
    level = console.level
    console.setLevel(logging.WARNING)  # its console handler follows this level; files log all
    try:
        with _stop_on_interrupt(state, progress), _rpc_errors(rpc, database, database_dir):
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=database_dir,
                max_trials_global=trials,
                max_trials_per_task=per_task,
                num_trials_per_iter=min(8, per_task),
                builder=ms.builder.LocalBuilder(
                    f_build=fast_build, max_workers=cores, timeout_sec=120
                ),
                runner=rpc.runner(rpc.check()) if rpc is not None else ms.runner.LocalRunner(),
                database=database,
                measure_callbacks=callbacks,
                task_scheduler="round-robin",  # the list is already heaviest first
            )
    finally:
        console.setLevel(level)
    stats.trials = _measured(database)
    stats.stopped = budget.stopped
    stats.estimate = budget.estimate()
    stats.measured_now = budget.done
    if state.lost:
        from lightir.lowering.rpc import RPCLost

        raise RPCLost(
            f"tuning over --rpc {rpc.describe()} stopped: no device answered ({state.lost}); "
            f"the {stats.trials} records measured are kept in {database_dir}: start the "
            "tracker and servers again and rerun with the same --tuning-db to go on"
        )
    if state.requested and not budget.stopped:
        raise TuningInterrupted(
            f"tuning interrupted; the {stats.trials} records measured are kept in "
            f"{database_dir}: a run with the same --tuning-db tunes only the tasks that have "
            "none; nothing was written"
        )
    stats.tuned_now = names
    return database, stats


@contextlib.contextmanager
def _rpc_errors(rpc, database, database_dir: str):
    """An RPC failure MetaSchedule raises (not one it reports per candidate) as RPCLost."""
    if rpc is None:
        yield
        return
    try:
        yield
    except Exception as exc:
        from lightir.lowering.rpc import RPCLost

        kept = _measured(database)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        raise RPCLost(
            f"tuning over --rpc {rpc.describe()} failed ({first}); the {kept} records "
            f"measured are kept in {database_dir}"
        ) from exc


def search_sizes(per_task: int) -> dict:
    """Sizes of MetaSchedule's evolutionary search for ``per_task`` trials per task.

    Its defaults (a population of 512 evolved 4 times, at least 50 fresh candidates) are
    made for 1000+ trials a task; at 4 trials a task they spent 15.6 s of every
    4-candidate batch on the zoo ResNet (fp32, 64 trials over 15 tasks), and a population
    of 64 evolved twice took 4.7 s with the same tuned latency (5.16 and 5.01 ms). At 256
    trials (17 a task) 32 evolved once reached 2.26 ms where 64 evolved twice reached 3.09
    (tools/README.md). The population grows with the trials a task gets, back to the
    defaults at 256 a task.
    """
    if per_task >= 256:
        return {}
    population = min(512, max(32, 2 * per_task))
    return dict(
        population_size=population,
        init_min_unmeasured=min(50, max(8, population // 4)),
        genetic_num_iters=1 if per_task < 64 else 2,
    )


@dataclass
class _Budget:
    """When to stop before the trials are spent: time, or the model as fast as the goal."""

    weights: list[float]
    tuned_seconds: float = 0.0  # already-tuned tasks: best time x calls
    max_seconds: float | None = None
    goal_seconds: float | None = None
    started: float = field(default_factory=time.perf_counter)
    best: dict[int, float] = field(default_factory=dict)
    stopped: str = ""
    done: int = 0  # candidates measured

    def estimate(self) -> float | None:
        """Seconds per model run from the best kernels; None until every task has one."""
        if len(self.best) < len(self.weights):
            return None
        return self.tuned_seconds + sum(self.weights[i] * t for i, t in self.best.items())

    def exhausted(self) -> str:
        if self.max_seconds is not None and time.perf_counter() - self.started >= self.max_seconds:
            return "time"
        estimate = self.estimate()
        if self.goal_seconds is not None and estimate is not None:
            if estimate <= self.goal_seconds:
                return "goal"
        return ""


class TuningInterrupted(LightirError):
    """Ctrl-C during tuning: the records measured so far are in the database."""

    exit_code = 130


@dataclass
class _Interrupt:
    requested: bool = False
    stopped: bool = False
    lost: str = ""  # the RPC error that ended the tuning


@contextlib.contextmanager
def _stop_on_interrupt(state: _Interrupt, progress: Callable[[str], None] | None):
    """First Ctrl-C: finish the batch being measured, then stop. Second: stop at once.

    A KeyboardInterrupt raised inside MetaSchedule's loop is swallowed there (tuning went on
    after SIGINT), so the first one only sets a flag, which the measure callback acts on.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True
        say = progress or (lambda line: print(line, file=sys.stderr))
        say("interrupt: stopping after the batch being measured (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _x86_intrinsics_only():
    """Register only the x86 tensor intrinsics while tune contexts are created.

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose ``__init__`` registers the
    intrinsics of every backend: 31 s on this machine (CUDA's alone 19.5 s), once per tuning
    run, for an x86 task that can only use the x86 ones. The package is stood in for by an
    empty one with the same path while the x86 submodule is imported, and taken out again
    afterwards, so a later ``import tvm.s_tir.tensor_intrin`` registers the rest as usual.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    spec = importlib.util.find_spec(name)
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        importlib.import_module(f"{name}.x86")
        _byte_operand_vnni()
        yield
    finally:
        if sys.modules.get(name) is package:
            del sys.modules[name]


def _byte_operand_vnni() -> None:
    """Re-register VNNI's 16x4 dot product with the operand types LLVM 22 declares.

    TVM 0.27's ``dot_16x4_vnni`` calls ``llvm.x86.avx512.vpdpbusd.512`` with two
    ``<16 x i32>`` operands; the LLVM that TVM 0.27's wheels link (22) declares them
    ``<64 x i8>``, so every tensorized kernel failed LLVM's module verification ("Call
    parameter type does not match function signature!") and tuning could only keep the
    untensorized ones. The same computation (4 uint8 broadcast to all 16 lanes, times 16x4
    int8, summed into 16 int32) with byte vectors, registered under the same name so
    MetaSchedule's VNNI rule uses it. With an LLVM that still takes ``<16 x i32>``
    (checked by building one call) TVM's own stays.
    """
    global _VNNI_CHECKED
    if _VNNI_CHECKED:
        return
    _VNNI_CHECKED = True
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin import x86

    impl = _vnni_bytes()
    if _builds(impl):
        TensorIntrin.register(
            x86.VNNI_DOT_16x4_INTRIN, x86.dot_product_16x4_u8i8i32_desc, impl, override=True
        )


_VNNI_CHECKED = False


def _vnni_bytes():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                a_u8x64,
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    return impl


def _builds(impl) -> bool:
    """Whether LLVM accepts ``impl`` (compiled for a VNNI CPU; nothing is run)."""
    import tvm

    target = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})
    try:
        tvm.compile(impl.with_attr("global_symbol", "vnni_probe"), target=target)
    except Exception:  # LLVM's verifier: the operand types of this LLVM differ
        return False
    return True


def _tune_contexts(tasks, work_dir: str, search: dict | None = None):
    """MetaSchedule's tune contexts, with :class:`SerialTensorized` before the vectorizer.

    The contexts are made as MetaSchedule makes them (its rules, postprocessors and mutators
    for the target), then made again with the same lists plus one postprocessor.
    """
    from tvm.s_tir import meta_schedule as ms

    def make(tasks, **kwargs):
        strategy = ms.search_strategy.EvolutionarySearch(**search) if search else "evolutionary"
        return ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, strategy=strategy, **kwargs
        )

    contexts, weights = make(tasks, work_dir=work_dir, seed=0)
    if not any(
        rule.__class__.__name__ == "MultiLevelTilingWithIntrin"
        for context in contexts
        for rule in context.space_generator.sch_rules
    ):
        return contexts, weights  # no tensor intrinsic for this target: nothing to keep serial
    fixed = []
    for index, (task, context) in enumerate(zip(tasks, contexts)):
        space = context.space_generator
        postprocs = [p.clone() for p in space.postprocs]
        at = next(
            (
                i
                for i, p in enumerate(postprocs)
                if p.__class__.__name__ == "RewriteParallelVectorizeUnroll"
            ),
            None,
        )
        if at is None:
            fixed.append(context)
            continue
        postprocs.insert(at, serial_tensorized())
        generator = ms.space_generator.PostOrderApply(
            sch_rules=[r.clone() for r in space.sch_rules],
            postprocs=postprocs,
            mutator_probs={m.clone(): p for m, p in space.mutator_probs.items()},
        )
        fixed.extend(make([task], work_dir=work_dir, space=generator, seed=index + 1)[0])
    return fixed, weights


TENSORIZED_OUTER = "lightir.tensorized_outer"


def serial_tensorized():
    """A postprocessor that keeps the loop around a tensorized block out of vectorization.

    MetaSchedule's ``RewriteParallelVectorizeUnroll`` fuses and vectorizes the innermost
    spatial loops of every block, including the loop that encloses a block marked for
    tensorization (``meta_schedule.auto_tensorize``, e.g. VNNI's 16x4 dot product). After
    ``RewriteTensorize`` the vectorized loop then holds the intrinsic's own vector code, and
    TVM 0.27's lowering stops with "VectorizeLoop before LiftStorageAlloc": measured on the
    zoo ResNet's NHWC int8 convs, 12 of 18 postprocessed VNNI sketches failed to build this
    way (tools/README.md). That postprocessor leaves a loop with any annotation alone, so
    this one, run before it, annotates the innermost loop above each such block. The
    annotation is a traced schedule step, so a tuning record replays it; lowering ignores it.
    A candidate whose marked block reads through an inlined pad cannot be tensorized and is
    rejected (:func:`_reads_conditionally`).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.postproc import PyPostproc

    @derived_object
    class SerialTensorized(PyPostproc):
        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, sch) -> bool:
            import tvm

            for gvar, func in sch.mod.functions.items():
                if not isinstance(func, tvm.tirx.PrimFunc):
                    continue
                for name in _tensorized_blocks(func.body, []):
                    block = sch.get_sblock(name, gvar.name_hint)
                    if _reads_conditionally(sch.get(block).body):
                        return False
                    loops = sch.get_loops(block)
                    if loops and TENSORIZED_OUTER not in sch.get(loops[-1]).annotations:
                        sch.annotate(loops[-1], TENSORIZED_OUTER, 1)
            return True

        def clone(self):
            return serial_tensorized()

    return SerialTensorized()


def _reads_conditionally(body) -> bool:
    """Whether ``body`` holds an ``if_then_else``: a padding block computed inline.

    The search's compute-location decisions (sampled, and mutated by
    ``MutateComputeLocation``) may inline a conv's zero-pad block into the block marked for
    VNNI; its reads become ``if_then_else(inside, x, 0)``, which the 16x4 dot product does
    not match, and ``RewriteTensorize`` only warns ("Tensorize failed") and leaves the block
    as plain loops, which are then measured as if they were the tensorized sketch. Sampled
    on the zoo ResNet's int8 conv tasks: 24 of 270 candidates; a tuning run at 64 trials
    logged 4460 such warnings and kept 1 VNNI kernel of 32.
    """
    # TVM 0.27's Python API has no TIR visitor (tirx lacks stmt_functor); the block's printed
    # body names the call.
    return "if_then_else" in str(body)


def _tensorized_blocks(stmt, found: list[str]) -> list[str]:
    """Names of the blocks under ``stmt`` marked for tensorization, outermost first."""
    import tvm

    if isinstance(stmt, tvm.s_tir.SBlockRealize):
        block = stmt.block
        if "meta_schedule.auto_tensorize" in block.annotations:
            found.append(block.name_hint)
        _tensorized_blocks(block.body, found)
    elif isinstance(stmt, tvm.tirx.SeqStmt):
        for child in stmt.seq:
            _tensorized_blocks(child, found)
    elif hasattr(stmt, "body"):
        _tensorized_blocks(stmt.body, found)
    return found


def _batch_callback(names: list[str], total: int, progress, state: _Interrupt, budget: _Budget):
    """A MetaSchedule measure callback: report each batch; stop on Ctrl-C, time or goal."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    from lightir.lowering.rpc import lost as rpc_lost

    best = budget.best
    done = [0]

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(
            self, task_scheduler, task_id, measure_candidates, builder_results, runner_results
        ):
            if not runner_results:
                return
            done[0] += len(runner_results)
            budget.done = done[0]
            errors = []
            for result in runner_results:
                if result.error_msg is None and result.run_secs:
                    seconds = sum(float(s) for s in result.run_secs) / len(result.run_secs)
                    best[task_id] = min(best.get(task_id, float("inf")), seconds)
                elif result.error_msg:
                    errors.append(str(result.error_msg))
            if len(errors) == len(runner_results) and rpc_lost(errors):
                # Every candidate of the batch failed to reach a device: the server or the
                # tracker is gone; tuning on would only fail every remaining candidate.
                state.lost = errors[0].strip().splitlines()[-1][:200]
                state.requested = True
            if progress is not None:
                shown = (
                    f"{best[task_id] * 1e6:.1f} us" if task_id in best else "no valid candidate yet"
                )
                progress(
                    f"tuning {done[0]}/{total} trials: task {task_id + 1}/{len(names)} "
                    f"{names[task_id]}, best {shown}"
                )
            if not state.requested:
                budget.stopped = budget.exhausted()
                if budget.stopped:
                    state.requested = True
                    if progress is not None:
                        progress(_stop_line(budget))
            if state.requested and not state.stopped:
                state.stopped = True
                for index, record in enumerate(task_scheduler.tasks_):
                    if not record.is_terminated:
                        task_scheduler.terminate_task(index)

    return Progress()


def _stop_line(budget: _Budget) -> str:
    estimate = budget.estimate()
    if budget.stopped == "goal":
        return (
            f"tuning stopped: the tuned kernels add up to {estimate * 1e3:.3f} ms, the goal "
            f"(onnxruntime's time) is {budget.goal_seconds * 1e3:.3f} ms"
        )
    shown = f"; the tuned kernels add up to {estimate * 1e3:.3f} ms" if estimate else ""
    return f"tuning stopped: its {budget.max_seconds:.0f} s are spent{shown}"


def apply_database(mod, target, database) -> tuple[object, list[str]]:
    """Fuse the imported ``mod`` and schedule every kernel ``database`` has a record for.

    Returns the module and the names of the kernels that got a tuned schedule.
    """
    import tvm
    from tvm import relax

    # Records may replay a tensorization: the intrinsics they name must be registered.
    with _x86_intrinsics_only(), target, database, tvm.transform.PassContext(opt_level=3):
        mod = relax.get_pipeline("zero")(mod)
    applied = [
        gvar.name_hint
        for gvar, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc) and (func.attrs or {}).get("tirx.is_scheduled")
    ]
    return mod, sorted(applied)


def _measured(database) -> int:
    """Records of candidates that ran (a failed measurement is stored with 1e10 s)."""
    return sum(
        1
        for record in database.get_all_tuning_records()
        if record.run_secs and all(float(s) < 1e9 for s in record.run_secs)
    )


def _best_seconds(database, task, target) -> float:
    """The best measured time of ``task``'s kernel in ``database``; 0.0 when it has none."""
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return 0.0
    records = database.get_top_k(database.commit_workload(mod), 1)
    if not records or not records[0].run_secs:
        return 0.0
    secs = [float(s) for s in records[0].run_secs]
    return sum(secs) / len(secs) if all(s < 1e9 for s in secs) else 0.0


def _tuned(database, task, target) -> bool:
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return False
    return database.query_tuning_record(mod, target, "main") is not None


def _flops(task) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops as estimate

    try:
        return float(estimate(task.dispatched[0]))
    except Exception:  # an estimate only orders the tasks
        return 1.0
