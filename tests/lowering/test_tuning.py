"""Tuning budgets (issue 17 item 3): search sizes, a time budget, stopping at onnxruntime."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("tvm")

import lightir  # noqa: E402
from lightir.lowering.tuning import _Budget, search_sizes  # noqa: E402


def test_search_sizes_grow_with_the_trials_a_task_gets():
    small, middle, large = search_sizes(4), search_sizes(64), search_sizes(200)
    assert small == {"population_size": 32, "init_min_unmeasured": 8, "genetic_num_iters": 1}
    assert small["population_size"] < middle["population_size"] < large["population_size"]
    assert middle["genetic_num_iters"] == 2
    # MetaSchedule's own defaults (population 512, 4 generations) from 256 trials a task.
    assert search_sizes(256) == {} and search_sizes(5000) == {}


def test_the_estimate_waits_for_every_task_then_the_goal_stops_tuning():
    budget = _Budget(weights=[2.0, 1.0], tuned_seconds=0.5e-3, goal_seconds=1.0e-3)
    budget.best[0] = 0.1e-3
    assert budget.estimate() is None and budget.exhausted() == ""  # task 1 unmeasured
    budget.best[1] = 0.4e-3
    assert budget.estimate() == pytest.approx(0.5e-3 + 2 * 0.1e-3 + 0.4e-3)
    assert budget.exhausted() == ""  # 1.1 ms > 1.0 ms
    budget.best[1] = 0.2e-3
    assert budget.exhausted() == "goal"  # 0.9 ms
    # Without a goal only time stops it.
    assert _Budget(weights=[1.0], best={0: 1e-9}).exhausted() == ""
    late = _Budget(weights=[1.0], max_seconds=5.0, started=time.perf_counter() - 6.0)
    assert late.exhausted() == "time"
    assert _Budget(weights=[1.0], max_seconds=60.0).exhausted() == ""


@pytest.mark.slow
def test_tuning_stops_at_onnxruntime_and_when_its_time_is_spent(tmp_path):
    """MetaSchedule (run with -m slow): a time budget ends tuning after the batch in
    flight, a library is still built and checked; tuning stops at the goal once every
    task has a kernel whose times add up to onnxruntime's."""
    pytest.importorskip("xgboost")
    from lightir.lowering import compile_model

    model = lightir.optimize("zoo:digits", "reparam").model
    lines: list[str] = []
    timed = compile_model(
        model, tmp_path / "a.so", "x86", tune_trials=400, tuning_db=tmp_path / "db1",
        tune_seconds=1.0, tune_goal=False, progress=lines.append,
    )  # fmt: skip
    tuning = timed.metadata["tuning"]
    assert timed.checked and tuning["stopped"] == "time"
    assert any(line.startswith("tuning stopped: its 1 s are spent") for line in lines)
    assert sum(line.startswith("tuning ") and "trials" in line for line in lines) == 1
    assert tuning["search"]["population_size"] >= 32
    # A goal every kernel meets (tune_goal, off by default): tuning stops once each task
    # has a measured kernel.
    lines.clear()
    goal = compile_model(
        model, tmp_path / "b.so", "x86", tune_trials=400, tuning_db=tmp_path / "db2",
        tune_goal=1.0, progress=lines.append,
    )  # fmt: skip
    tuning = goal.metadata["tuning"]
    assert goal.checked and tuning["stopped"] == "goal", lines
    assert tuning["estimate_ms"] <= tuning["goal_ms"] == 1000.0
    # The stop is checked on the built model, which met the goal: no more tuning.
    (check,) = tuning["goal_checks"]
    assert 0 < check["model_vs_goal"] <= 1.0 and check["kernels_ms"] == pytest.approx(
        tuning["estimate_ms"], abs=1e-4
    )
    batches = sum(line.startswith("tuning ") and "trials" in line for line in lines)
    assert batches == tuning["tasks"]  # one batch a task, round-robin: then every task has one
    assert "the goal (onnxruntime's time) is 1000.000 ms" in lines[-1]


def test_the_goal_is_onnxruntimes_time_for_the_model_here():
    from lightir.lowering.tvm_backend import onnxruntime_seconds

    small = lightir.optimize("zoo:digits", "reparam").model
    large = lightir.optimize("zoo:resnet", "reparam").model
    fast = onnxruntime_seconds(small, {"input": (1, 1, 8, 8)})
    slow = onnxruntime_seconds(large, {"input": (1, 3, 32, 32)})
    assert 0 < fast < slow < 1.0


def test_tune_minutes_without_tune_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m.so"
    for extra in ([], ["--tune", "8", "--tuning-db", str(tmp_path / "db")]):
        minutes = "5" if not extra else "0"
        done = subprocess.run(
            [sys.executable, "-m", "lightir.cli", "zoo:digits", "-p", "reparam", "--target",
             "x86", "-o", str(out), "--tune-minutes", minutes, *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--tune-minutes M caps --tune N" in lines[0]
        assert not out.exists()
