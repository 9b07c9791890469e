"""--metric: the user's score on held-out samples, with its interval, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir import metrics, zoo
from lightir.data import CalibrationData
from lightir.testing import run


@pytest.fixture(scope="module")
def labeled():
    images, labels = zoo.digits_test_split()
    return CalibrationData({"input": images, "__labels__": labels})


def test_top1_on_held_out_samples_with_a_wilson_interval(labeled):
    result = lightir.optimize("zoo:digits", "fold-bn", calib=labeled, metric="top1")
    m = result.report.metric
    assert m["name"] == "top1" and m["original"]["samples"] == 450 // 4
    original, final = m["original"], m["final"]
    assert 0.9 < original["value"] <= 1.0 and original["low"] < original["value"]
    assert original["high"] <= 1.0 and final == original and m["drop"] == 0.0  # exact pass
    # The same figure by hand: the first 112 samples, which no pass fit on.
    images, labels = zoo.digits_test_split()
    (outputs,) = run(zoo.build("digits"), [{"input": images[:112]}])
    top1 = float((next(iter(outputs.values())).argmax(axis=1) == labels[:112]).mean())
    assert original["value"] == pytest.approx(top1)


def test_agreement_drops_below_one_when_a_lossy_pass_changes_answers(labeled):
    result = lightir.optimize(
        "zoo:digits",
        "prune{ratio=0.7,round=1,protect-last=false}",
        calib=labeled,
        metric="agreement",
        tolerances={"prune": "cos:-1"},
    )
    m = result.report.metric
    assert m["original"]["value"] == 1.0
    assert m["final"]["value"] < 1.0 and m["drop"] > 0
    assert m["final"]["low"] <= m["final"]["value"] <= m["final"]["high"]


def test_interval_arithmetic():
    low, high = metrics._wilson(1.0, 32)
    assert high == 1.0 and low == pytest.approx(0.8928, abs=1e-4)
    low, high = metrics._wilson(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    values = np.arange(100, dtype=float)
    low, high = metrics._bootstrap(lambda rows: float(values[rows].mean()), 100)
    assert low < 49.5 < high and high - low < 20


def test_a_plugin_file_metric_gets_outputs_reference_and_labels(tmp_path, labeled):
    plugin = tmp_path / "my_metric.py"
    plugin.write_text(
        "import numpy as np\n"
        "def error_rate_inverse(outputs, reference, labels):\n"
        "    (logits,) = outputs.values()\n"
        "    assert set(outputs) == set(reference) and len(labels) == len(logits)\n"
        "    return float((logits.argmax(axis=1) == labels).mean())\n"
    )
    result = lightir.optimize(
        "zoo:digits", "fold-bn", calib=labeled, metric=f"{plugin}:error_rate_inverse"
    )
    top1 = lightir.optimize("zoo:digits", "fold-bn", calib=labeled, metric="top1")
    mine, builtin = result.report.metric["original"], top1.report.metric["original"]
    assert mine["value"] == pytest.approx(builtin["value"])
    assert mine["low"] <= mine["value"] <= mine["high"]  # bootstrap interval


def test_bad_metrics_stop_before_any_pass(tmp_path, labeled, throwaway_passes):
    ran = []

    @lightir.register_pass("count-runs", contract="exact")
    def count_runs(model, context):
        """Counts its runs."""
        ran.append(1)
        return False

    unlabeled = CalibrationData({"input": labeled.arrays["input"]})
    plugin = tmp_path / "bad_metric.py"
    plugin.write_text("def text(outputs, reference, labels):\n    return 'high'\n")
    cases = [
        ("top1", unlabeled, lightir.UsageError, "needs labels"),
        ("top1", None, lightir.UsageError, "needs --calib"),
        ("no_such_module:f", labeled, lightir.UsageError, "import failed"),
        (f"{plugin}:missing", labeled, lightir.UsageError, "has no function"),
        (f"{plugin}:text", labeled, lightir.UsageError, "not a number"),
        ("accuracy", labeled, lightir.UsageError, "use one of top1"),
    ]
    for metric, calib, error, message in cases:
        with pytest.raises(error, match=message):
            lightir.optimize("zoo:digits", "count-runs", calib=calib, metric=metric)
    images = labeled.arrays["input"]
    mismatched = CalibrationData({"input": images, "__labels__": np.zeros(3, np.int64)})
    with pytest.raises(lightir.InputError, match="3 labels for 450 samples"):
        lightir.optimize("zoo:digits", "count-runs", calib=mismatched, metric="top1")
    one = CalibrationData({"input": images[:1], "__labels__": np.zeros(1, np.int64)})
    with pytest.raises(lightir.InputError, match="at least 2 held-out samples"):
        lightir.optimize("zoo:digits", "count-runs", calib=one, metric="top1")
    assert ran == []
