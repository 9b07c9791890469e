"""Probes from cached activations: the suffix of a probe model computes its whole outputs."""

from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir.data import CalibrationData, input_specs
from lightir.onnx_bridge import OrtModel
from lightir.pass_base import PassContext
from lightir.search import suffix as suffix_module
from lightir.search.latency import LatencyTable
from lightir.search.space import Space, name_nodes
from lightir.search.suffix import Suffixes


@pytest.fixture(scope="module")
def space():
    model = lightir.optimize("zoo:resnet", "fold-bn").model
    name_nodes(model)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    data = CalibrationData({"input": images}).bind(input_specs(model))
    return Space(model, LatencyTable("macs"), PassContext(data), kinds=("prune", "lowrank"))


def probes(space):
    return list(space.fit.calibration.batches(batch_size=8))[:2]


def test_a_probe_from_its_cut_computes_what_the_whole_probe_computes(space):
    batches = probes(space)
    suffixes = Suffixes(space.model, batches)
    units = [i for i, u in enumerate(space.units) if u.levels]
    touched = {i: [n.name for n in space.units[i].touches] for i in units}
    suffixes.prepare([suffixes.cut_of(touched[i]) for i in units])
    served = 0
    for index in units:
        probe, _ = space.apply({index: len(space.units[index].levels)}, probe=True)
        got = suffixes.outputs(probe, touched[index], space.units[index].kind)
        whole = OrtModel(probe).run_rows(batches)
        if got is None:
            continue
        served += 1
        for name, ref in whole.items():
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert served >= len(units) // 2 and suffixes.enabled  # most cuts are past node 0


def test_a_cut_inside_a_residual_block_needs_the_skip_too(space):
    suffixes = Suffixes(space.model, probes(space))
    nodes = list(space.model.graph)
    adds = [i for i, n in enumerate(nodes) if n.op_type == "Add"]
    add = nodes[adds[1]]
    # Cut at the second conv of that block: its input and the block's input both cross.
    cut = max(i for i, n in enumerate(nodes[: adds[1]]) if n.op_type == "Conv")
    crossing = suffixes.crossing(cut)
    assert len(crossing) >= 2
    assert {v.name for v in add.inputs} & set(crossing)


def test_past_the_budget_probes_run_whole(space, monkeypatch):
    monkeypatch.setattr(suffix_module, "CACHE_BYTES", 1)
    suffixes = Suffixes(space.model, probes(space))
    index = next(i for i, u in enumerate(space.units) if u.levels and u.kind == "prune")
    names = [n.name for n in space.units[index].touches]
    suffixes.prepare([suffixes.cut_of(names)])
    probe, _ = space.apply({index: 1}, probe=True)
    assert suffixes.outputs(probe, names, "prune") is None and not suffixes.cached
