"""MetaSchedule tuning with a persistent database (``--tune N --tuning-db DIR``).

* Tasks are extracted from the fused module (Relax's "zero" pipeline), as MetaSchedule keys
  its database on fused TIR functions.
* Only tasks the database has no record for are tuned, heaviest first (FLOPs times how many
  times the model calls them), so a re-run with a warm database compiles without tuning, and
  models that share workloads share records.
* Records are committed to ``DIR`` as they are measured (MetaSchedule's JSON database), so an
  interrupted run keeps what it measured.
* The builder compiles candidates with a build function that skips the import of
  ``tvm.s_tir.tensor_intrin`` the default one does (about 40 s on this machine, in a worker
  pool re-created per batch: every candidate timed out at 30 s; see ../shared/TVM-NOTES.md).

Needs ``lightir[tune]`` (xgboost for the cost model, psutil, cloudpickle).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


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


def tune(fused_mod, target, database_dir: str, trials: int) -> tuple[object, TuningStats]:
    """Tune the tasks of ``fused_mod`` missing from ``database_dir``; return (database, stats)."""
    from tvm.s_tir import meta_schedule as ms

    os.makedirs(database_dir, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=database_dir)
    tasks = ms.relax_integration.extract_tasks(fused_mod, target)
    stats = TuningStats(tasks=len(tasks))
    missing = [t for t in tasks if not _tuned(database, t, target)]
    stats.already_tuned = len(tasks) - len(missing)
    if not trials or not missing:
        return database, stats
    missing.sort(key=lambda t: -_flops(t) * t.weight)
    per_task = max(1, trials // len(missing))
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        missing, work_dir=database_dir, seed=0
    )
    cores = max(1, (os.cpu_count() or 1))
    ms.tune.tune_tasks(
        tasks=contexts,
        task_weights=weights,
        work_dir=database_dir,
        max_trials_global=trials,
        max_trials_per_task=per_task,
        num_trials_per_iter=min(8, per_task),
        builder=ms.builder.LocalBuilder(f_build=fast_build, max_workers=cores, timeout_sec=120),
        runner=ms.runner.LocalRunner(),
        database=database,
        task_scheduler="round-robin",  # the list is already heaviest first
    )
    stats.tuned_now = [t.task_name for t in missing]
    stats.trials = sum(1 for _ in database.get_all_tuning_records())
    return database, stats


def apply_database(mod, target, database) -> tuple[object, list[str]]:
    """Fuse the imported ``mod`` and schedule every kernel ``database`` has a record for.

    Returns the module and the names of the kernels that got a tuned schedule.
    """
    import tvm
    from tvm import relax

    with target, database, tvm.transform.PassContext(opt_level=3):
        mod = relax.get_pipeline("zero")(mod)
    applied = [
        gvar.name_hint
        for gvar, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc) and (func.attrs or {}).get("tirx.is_scheduled")
    ]
    return mod, sorted(applied)


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
