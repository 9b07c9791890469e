"""compress: the fastest model within a metric budget, checked on samples the search never saw."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

import lightir
from lightir import metrics, zoo
from lightir.data import CalibrationData
from lightir.errors import PassDeclined
from lightir.pass_base import Contract, Fallback, Pass, PassResult
from lightir.testing import run
from tests.test_cli import lightir_opt

# Calibration rows: the first 75 are the manager's held-out rows (verification and the
# metric's check); compress selects on the next ones and fits on the rest. Rows 300 on are
# an evaluation split nothing sees.
CALIBRATION, EVALUATION = slice(0, 300), slice(300, 450)


@pytest.fixture(scope="module")
def digits():
    images, labels = zoo.digits_test_split()
    return images, labels


@pytest.fixture(scope="module")
def labeled(digits):
    images, labels = digits
    return CalibrationData({"input": images[CALIBRATION], "__labels__": labels[CALIBRATION]})


@pytest.fixture(scope="module")
def searched(labeled):
    return lightir.optimize(
        "zoo:digits", "compress{max-drop=0.02,objective=macs}", calib=labeled, metric="top1"
    )


def accuracy(model, images, labels) -> float:
    (out,) = run(model, [{"input": images}])
    return float((next(iter(out.values())).argmax(axis=1) == labels).mean())


def test_the_search_shrinks_the_model_within_budget_on_unseen_samples(searched, digits):
    record = searched.report.record("compress")
    assert record.status == "changed", record.message
    stats = record.stats
    assert searched.report.final.macs < 0.5 * searched.report.original.macs
    assert stats["selection_samples"] >= 32 and stats["fit_samples"] >= 16
    # The front: the original, then candidates; the chosen one is the cheapest within budget.
    front = stats["front"]
    assert front[0]["steps"] == 0 and front[0]["drop"] == 0.0
    within = [p for p in front if p["meets"] and p["confirmed"]]  # on both selection halves
    final = searched.report.final.macs
    assert final in {p["measured_macs"] for p in within}
    fallback = stats.get("fallback")
    if fallback and fallback["kept"]:  # the cheapest lost more than the budget on held-out rows
        assert fallback["tried"][0]["held_out"]["drop"] > 0.02
        assert stats["held_out"]["drop"] <= 0.02
    else:
        assert min(p["measured_macs"] for p in within) == final
    assert all(p["drop"] <= 0.02 for p in within)
    # Single passes over every layer are on the front too, each family from its strongest
    # setting down (time is ample here): every setting tried that broke the budget is
    # stronger than every one that met it.
    singles = [
        p
        for p in front
        if p["single_pass"] and not p["extra_steps"] and "without" not in p["single_pass"]
    ]
    families: dict[str, list[dict]] = {}
    for point in singles:
        family, _, strength = point["single_pass"].rpartition(" ")
        families.setdefault(family, []).append({**point, "strength": float(strength)})
    assert "prune" in families and {"svd", "spatial-svd", "tucker"} & set(families)
    for family, tried in families.items():
        assert tried[0]["strength"] == (0.75 if family == "prune" else 0.5)  # the strongest
        within = [t for t in tried if t["meets"] and t["confirmed"]]
        stronger = "ratio" if family == "prune" else "energy"
        for point in within:
            for other in tried:
                if other in within:
                    continue
                harder = (
                    other["strength"] > point["strength"]
                    if stronger == "ratio"
                    else other["strength"] < point["strength"]
                )
                assert harder, (family, tried)  # what broke it is stronger than what met it
    # Under the MAC objective the estimate is exact.
    assert all(p["estimated_macs"] == p["measured_macs"] for p in front)
    # On the evaluation split no step saw, accuracy stays within budget plus its interval.
    images, labels = digits
    original = accuracy(zoo.build("digits"), images[EVALUATION], labels[EVALUATION])
    result = accuracy(searched.model, images[EVALUATION], labels[EVALUATION])
    held_out = stats["held_out"]
    assert held_out["metric"] == "top1"
    assert held_out["result"]["samples"] == metrics.holdout_rows(300, 8)
    assert original - result <= 0.02 + 1.96 * np.sqrt(0.25 / 150)


def test_the_sensitivity_table_has_every_kind_and_level(searched):
    rows = searched.report.record("compress").stats["sensitivity"]
    assert {row["kind"] for row in rows} == {"prune", "lowrank", "int8"}
    for row in rows:
        assert row["output_error"] >= 0 and np.isfinite(row["metric_drop"])
        assert row["delta_macs"] < 0 or row["kind"] == "int8"


UNMEETABLE = "compress{max-drop=0,objective=macs,kinds=prune+lowrank,time-limit=60}"


def test_no_setting_within_budget_is_declined_with_the_best_found(labeled):
    # Every change moves the output a little: cosine cannot stay at exactly 1.
    result = lightir.optimize("zoo:digits", UNMEETABLE, calib=labeled, metric="cosine")
    record = result.report.record("compress")
    assert record.status == "declined" and record.failure == "budget"
    assert "no setting keeps cosine within max-drop=0" in record.message
    assert "smallest drop found" in record.message
    assert record.stats["front"]  # what it tried is still reported
    assert result.report.final.macs == result.report.original.macs


def test_an_unmeetable_budget_exits_2_and_writes_no_model(labeled, tmp_path):
    calib, out, front = tmp_path / "calib.npz", tmp_path / "small.onnx", tmp_path / "front.csv"
    np.savez(calib, input=labeled.arrays["input"], __labels__=labeled.labels)
    args = ("-p", UNMEETABLE, "--calib", calib, "--metric", "cosine", "-o", out, "-q")
    done = lightir_opt("zoo:digits", *args, "--front", front)
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("lightir-opt: error:")]
    assert "smallest drop found" in line and "no model written" in line
    assert not out.exists() and front.exists()  # what it explored says how far the budget is


def test_a_time_limit_keeps_the_original_and_says_why(labeled):
    result = lightir.optimize(
        "zoo:digits", "compress{time-limit=0.000001,objective=macs}", calib=labeled
    )
    record = result.report.record("compress")
    assert record.status == "declined" and "time limit" in record.message


def test_an_answer_not_min_speedup_faster_than_the_original_is_declined(labeled):
    """The answer is timed again (here: counted) beside the original before it is kept."""
    pipeline = "compress{max-drop=0.02,objective=macs,kinds=prune,time-limit=60,min-speedup=50}"
    result = lightir.optimize("zoo:digits", pipeline, calib=labeled, metric="top1")
    record = result.report.record("compress")
    assert record.status == "declined", record.message
    assert "measurably faster" in record.message and "min-speedup=50" in record.message
    assert 1.0 < record.stats["confirmed_speedup"] < 50  # it found a cheaper model, not 50x
    assert result.report.final.macs == result.report.original.macs


def test_the_contract_guard_judges_outputs_as_the_verifier_does():
    """compress's guard holds every output to its contract (cosine >= 0.9), whatever the
    user's metric reads: MTCNN R-Net's answer kept the face score and lost the boxes
    (cosine 0.85) and was rolled back."""
    from lightir.passes.compress import _contract_guard

    model = zoo.digits()
    guard = _contract_guard(Contract.lossy(min_cosine=0.9), model)
    (reference,) = run(model, [{"input": zoo.digits_test_split()[0][:32]}])
    assert guard(reference, reference) == []
    noisy = {
        k: v + np.random.default_rng(0).normal(0, 3 * v.std(), v.shape)
        for k, v in reference.items()
    }
    (problem,) = guard(noisy, reference)
    assert "cosine" in problem and "< 0.9" in problem


def test_min_speedup_below_one_is_a_usage_error():
    with pytest.raises(lightir.UsageError, match="min-speedup must be at least 1"):
        lightir.optimize("zoo:digits", "compress{min-speedup=0.5}")


def test_needs_calibration_data_before_any_work():
    with pytest.raises(lightir.UsageError, match="compress needs calibration data"):
        lightir.optimize("zoo:digits", "compress")


def test_a_broken_metric_budget_is_rolled_back(labeled, throwaway_passes):
    """The manager checks a pass's metric budget on its own held-out rows."""

    @lightir.register_pass("scramble", contract=Contract.lossy(min_cosine=-1.0))
    class Scramble(Pass):
        """Permutes the classifier's output rows: outputs keep their scale, answers change."""

        def metric_budget(self):
            return 0.01

        def run(self, model, context):
            gemm = [n for n in model.graph if n.op_type == "Gemm"][-1]
            weight = gemm.inputs[1].const_value.numpy()
            gemm.inputs[1].const_value = ir.tensor(np.roll(weight, 3, axis=0))
            return PassResult(model, modified=True)

    result = lightir.optimize("zoo:digits", "scramble", calib=labeled, metric="top1")
    record = result.report.record("scramble")
    assert record.status == "rolled-back" and record.failure == "contract"
    assert "beyond its budget of 0.01" in record.message
    assert record.stats["held_out"]["drop"] > 0.5


def _scrambling(model, shift: int):
    """``model`` with its classifier's output rows rolled by ``shift`` (0: unchanged)."""
    model = ir.from_proto(ir.to_proto(model))
    gemm = [n for n in model.graph if n.op_type == "Gemm"][-1]
    weight = gemm.inputs[1].const_value.numpy()
    gemm.inputs[1].const_value = ir.tensor(np.roll(weight, shift, axis=0))
    return model


def _offering(shifts):
    """A pass whose answer scrambles the answers and offers fallbacks rolled by ``shifts``."""

    class Offering(Pass):
        """Answers with a broken model, offering safer ones."""

        def metric_budget(self):
            return 0.01

        def run(self, model, context):
            fallbacks = [
                Fallback(f"shift {s}", lambda s=s, m=model: _scrambling(m, s), {"shift": s})
                for s in shifts
            ]
            broken = _scrambling(model, 3)
            return PassResult(broken, modified=True, stats={"shift": 3}, fallbacks=fallbacks)

    return Offering


def test_a_safer_answer_is_kept_when_the_pass_answer_misses_the_held_out_budget(
    labeled, throwaway_passes
):
    """The manager tries the offered fallbacks in order and keeps the first within budget."""
    lightir.register_pass("offering", contract=Contract.lossy(min_cosine=-1.0))(_offering([1, 0]))
    result = lightir.optimize("zoo:digits", "offering", calib=labeled, metric="top1")
    record = result.report.record("offering")
    assert record.status == "changed", record.message
    assert record.stats["shift"] == 0  # the kept fallback's stats replace the answer's
    fallback = record.stats["fallback"]
    assert fallback["kept"] == "shift 0"
    assert [t["label"] for t in fallback["tried"]] == ["the pass's answer", "shift 1", "shift 0"]
    assert fallback["tried"][0]["held_out"]["drop"] > 0.5
    assert fallback["tried"][1]["held_out"]["drop"] > 0.5
    assert record.stats["held_out"]["drop"] == 0.0
    assert accuracy(result.model, *(a[EVALUATION] for a in zoo.digits_test_split())) > 0.9


def test_the_pass_is_rolled_back_when_every_fallback_misses_too(labeled, throwaway_passes):
    lightir.register_pass("offering", contract=Contract.lossy(min_cosine=-1.0))(_offering([1, 2]))
    result = lightir.optimize("zoo:digits", "offering", calib=labeled, metric="top1")
    record = result.report.record("offering")
    assert record.status == "rolled-back" and record.failure == "contract"
    assert "as did the 2 safer answer(s) it offered" in record.message
    assert record.stats["fallback"]["kept"] is None
    # The report's held-out figure is the pass's own answer's.
    assert record.stats["held_out"] == record.stats["fallback"]["tried"][0]["held_out"]


def _flipping(model, images, flips: int):
    """``model`` with one class's bias raised just enough to change ``flips`` top-1 answers."""
    (out,) = run(model, [{"input": images}])
    logits = next(iter(out.values()))
    margins = np.sort((logits.max(axis=1) - logits[:, 0])[logits.argmax(axis=1) != 0])
    model = ir.from_proto(ir.to_proto(model))
    gemm = [n for n in model.graph if n.op_type == "Gemm"][-1]
    bias = gemm.inputs[2].const_value.numpy().copy()
    bias[0] += (margins[flips - 1] + margins[flips]) / 2 if flips else 0.0
    gemm.inputs[2].const_value = ir.tensor(bias)
    return model


def _nudging(held_out, answer: int, offered):
    """A pass (budget 0.02) whose answer flips ``answer`` held-out answers; fallbacks flip fewer.

    ``offered`` holds flip counts, "scrambled" for a fallback the interval rejects too, or
    "withdrawn" for one the pass withdraws when it is asked to build it.
    """

    class Nudging(Pass):
        """Answers with a model a little over budget, offering others."""

        def metric_budget(self):
            return 0.02

        def run(self, model, context):
            def build(flips, m=model):
                if flips == "scrambled":
                    return _scrambling(m, 3)
                if flips == "withdrawn":  # e.g. compress's, timed again and not faster
                    raise PassDeclined("timed 0.98x beside the original")
                return _flipping(m, held_out, flips)

            fallbacks = [
                Fallback(f"flips {f}", lambda f=f: build(f), {"flips": f}) for f in offered
            ]
            answer_model = build(answer)
            return PassResult(answer_model, True, stats={"flips": answer}, fallbacks=fallbacks)

    return Nudging


@pytest.fixture
def held_out(labeled):
    """The rows the manager checks the metric on (the calibration file's first ones)."""
    return labeled.arrays["input"][: metrics.holdout_rows(labeled.rows, 8)]


def test_an_answer_over_budget_on_the_held_out_rows_gives_way_to_a_safer_one(
    labeled, held_out, throwaway_passes
):
    """3 of 75 answers changed: within the interval (kept alone) but over the 0.02 budget."""
    lightir.register_pass("nudging", contract=Contract.lossy(min_cosine=-1.0))(
        _nudging(held_out, 3, [1])
    )
    result = lightir.optimize("zoo:digits", "nudging", calib=labeled, metric="agreement")
    record = result.report.record("nudging")
    assert record.status == "changed", record.message
    tried = record.stats["fallback"]["tried"]
    assert tried[0]["held_out"]["drop"] == pytest.approx(3 / len(held_out))
    assert tried[0]["held_out"]["result"]["high"] > 1 - 0.02  # the interval alone keeps it
    assert record.stats["fallback"]["kept"] == "flips 1" and record.stats["flips"] == 1
    assert record.stats["held_out"]["drop"] == pytest.approx(1 / len(held_out))


def test_an_answer_within_its_interval_stays_when_no_safer_one_is_within_budget(
    labeled, held_out, throwaway_passes
):
    lightir.register_pass("nudging", contract=Contract.lossy(min_cosine=-1.0))(
        _nudging(held_out, 3, ["scrambled", 3])
    )
    result = lightir.optimize("zoo:digits", "nudging", calib=labeled, metric="agreement")
    record = result.report.record("nudging")
    assert record.status == "changed", record.message
    assert record.stats["flips"] == 3 and record.stats["fallback"]["kept"] is None
    assert len(record.stats["fallback"]["tried"]) == 3
    assert record.stats["held_out"] == record.stats["fallback"]["tried"][0]["held_out"]


def test_a_withdrawn_fallback_is_listed_and_the_next_one_tried(labeled, held_out, throwaway_passes):
    lightir.register_pass("nudging", contract=Contract.lossy(min_cosine=-1.0))(
        _nudging(held_out, 3, ["withdrawn", 1])
    )
    result = lightir.optimize("zoo:digits", "nudging", calib=labeled, metric="agreement")
    record = result.report.record("nudging")
    assert record.status == "changed", record.message
    tried = record.stats["fallback"]["tried"]
    assert tried[1] == {"label": "flips withdrawn", "withdrawn": "timed 0.98x beside the original"}
    assert record.stats["fallback"]["kept"] == "flips 1" and record.stats["flips"] == 1


def test_a_pass_within_budget_on_the_held_out_rows_tries_no_fallback(
    labeled, held_out, throwaway_passes
):
    lightir.register_pass("nudging", contract=Contract.lossy(min_cosine=-1.0))(
        _nudging(held_out, 1, [0])
    )
    result = lightir.optimize("zoo:digits", "nudging", calib=labeled, metric="agreement")
    record = result.report.record("nudging")
    assert record.status == "changed" and record.stats["flips"] == 1
    assert "fallback" not in record.stats


def test_compress_offers_a_ladder_of_safer_fallbacks(searched, labeled):
    """Each fallback lost less on the selection samples than the one before it."""
    stats = searched.report.record("compress").stats
    front = stats["front"]
    selection = stats["selection_samples"]
    original = front[0]["measured_macs"]
    within = [p for p in front if p["meets"] and p["confirmed"] and p["measured_macs"] < original]
    chosen = min(within, key=lambda p: p["measured_macs"])
    half = selection // 2

    def pooled(p):
        return (p["drop"] * half + p["confirm_drop"] * (selection - half)) / selection

    # The ladder the pass offers, recomputed from its front: the fastest with strictly less.
    ladder, room = [], pooled(chosen)
    for point in sorted(within, key=lambda p: p["measured_macs"]):
        if point is not chosen and pooled(point) < room - 1e-9:
            ladder.append(point)
            room = pooled(point)
    assert stats["fallbacks_offered"] == min(len(ladder), 3)


def test_cli_writes_the_sensitivity_and_the_front(tmp_path, labeled):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=labeled.arrays["input"], __labels__=labeled.labels)
    sensitivity, front = tmp_path / "sens.csv", tmp_path / "front.json"
    out = tmp_path / "small.onnx"
    done = lightir_opt(
        "zoo:digits",
        "-p",
        "compress{objective=macs}",
        "--calib",
        calib,
        "--metric",
        "top1",
        "-o",
        out,
        "--sensitivity",
        sensitivity,
        "--front",
        front,
    )
    assert done.returncode == 0, done.stderr
    assert "compress: sensitivity" in done.stderr  # progress is shown
    header, *rows = sensitivity.read_text().splitlines()
    assert header.startswith("pass,index,kind,unit,layers,level,delta_macs") and rows
    assert json.loads(front.read_text())["rows"][0]["steps"] == 0
    bad = lightir_opt("zoo:digits", "-p", "compress", "--calib", calib, "--front", "x.txt")
    assert bad.returncode == 2 and "give a .csv or .json" in bad.stderr


def test_latency_is_measured_per_layer_and_per_candidate(labeled):
    """The default objective: a table of layer timings, int8 timed in place, whole-model
    timings of every candidate (figures vary run to run; their presence and sense do not)."""
    result = lightir.optimize("zoo:digits", "compress{max-drop=0.02}", calib=labeled, metric="top1")
    record = result.report.record("compress")
    stats = record.stats
    assert stats["objective"] == "latency" and stats["table_entries"] > 0
    assert all(row["ms"] > 0 for row in stats["latency_table"])
    assert all(point["measured_ms"] > 0 for point in stats["front"])
    assert {row["kind"] for row in stats["sensitivity"]} >= {"prune", "int8"}
    if record.status == "changed":
        assert stats["speedup"] >= 1.03  # timed again beside the original: min-speedup
        chosen = [p for p in stats["front"] if p["meets"] and p["confirmed"]]
        fastest = min(p["measured_ms"] for p in chosen)
        search = stats["front"][0]["measured_ms"] / fastest
        assert stats["search_speedup"] == pytest.approx(search, 0.01)
    else:
        assert "cheaper than" in record.message or "measurably faster" in record.message
