from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir.testing import GraphBuilder, assert_outputs_close, declines, op_types


def spread(weight, axis):
    ranges = np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)
    return ranges.max() / ranges.min()


def chain(activation="Relu", seed=0):
    b = GraphBuilder("chain", seed=seed)
    x = b.input("x", ["batch", 4, 8, 8])
    y = b.conv(x, 8, 3, bias=True)
    w = y.producer().inputs[1]
    wide = w.const_value.numpy() * np.geomspace(0.01, 10, 8).reshape(-1, 1, 1, 1)
    w.const_value = lightir.onnx_bridge.ir.tensor(wide.astype(np.float32), name=w.name)
    if activation == "PRelu":  # MTCNN's activation, with a per-channel slope
        slope = b.initializer(np.linspace(0.05, 0.5, 8).reshape(8, 1, 1).astype(np.float32))
        y = b.op("PRelu", [y, slope])
    else:
        y = b.relu(y) if activation == "Relu" else b.relu6(y)
    y = b.relu(b.conv(y, 8, 3, groups=8, bias=True))  # depthwise
    b.output(b.conv(y, 6, 1, pads=[0] * 4, bias=True), "out")
    return b.build()


@pytest.mark.parametrize("activation", ["Relu", "PRelu"])
def test_equalize_balances_channel_ranges_exactly(activation):
    model = chain(activation)
    result = lightir.optimize(model, "equalize")
    assert result.report.ok and result.report.records[0].stats["pairs"] == 2
    before = model.graph[0].inputs[1].const_value.numpy()
    after = result.model.graph[0].inputs[1].const_value.numpy()
    assert spread(after, 0) < spread(before, 0) / 10
    assert op_types(result.model) == op_types(model)
    assert_outputs_close(model, result.model, rtol=1e-5)


def test_equalize_declines_relu6_and_shared_weights():
    result = lightir.optimize(chain("Clip"), "equalize")
    assert result.report.records[0].stats["pairs"] == 1  # only the dw -> 1x1 pair (Relu)
    assert any("Clip between convs" in d for d in declines(result))
    b = GraphBuilder("shared", seed=1)
    x = b.input("x", [1, 4, 6, 6])
    w = b.initializer(b.conv_weight(4, 4, (3, 3)))
    b.output(b.conv(b.relu(b.conv(x, 4, 3, weight=w)), 4, 3, weight=w), "y")
    shared = lightir.optimize(b.build(), "equalize")
    assert shared.report.records[0].status == "unchanged"
