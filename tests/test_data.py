"""Calibration data: batches keep every sample of a dynamic batch, whole batches of a fixed one."""

from __future__ import annotations

import numpy as np

from lightir import zoo
from lightir.data import CalibrationData, InputSpec, input_specs


def test_the_rows_after_the_last_whole_batch_come_as_a_smaller_batch():
    data = CalibrationData({"input": np.zeros((75, 1, 8, 8), np.float32)})
    data = data.bind(input_specs(zoo.build("digits")))  # dynamic batch
    sizes = [len(b["input"]) for b in data.batches(batch_size=8)]
    assert sizes == [8] * 9 + [3]
    assert [len(b["input"]) for b in data.batches(batch_size=8, limit=20)] == [8, 8, 4]


def test_a_fixed_batch_takes_whole_batches_only():
    data = CalibrationData({"x": np.zeros((10, 3), np.float32)})
    data.specs = [InputSpec("x", np.dtype(np.float32), (4, 3))]
    assert [len(b["x"]) for b in data.batches(batch_size=8)] == [4, 4]
