"""The search space: units of each kind, exact pricing of a choice, and applying it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import lightir
from lightir import zoo
from lightir.analysis.cost import inferred_shapes, node_macs
from lightir.data import CalibrationData, input_specs
from lightir.pass_base import PassContext
from lightir.search.latency import LatencyTable
from lightir.search.space import RATIOS, Space, between, name_nodes
from lightir.testing import run


@pytest.fixture(scope="module")
def folded():
    model = lightir.optimize("zoo:resnet", "fold-bn").model
    name_nodes(model)
    return model


@pytest.fixture(scope="module")
def data(folded):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    return CalibrationData({"input": images}).bind(input_specs(folded))


def macs_of(model) -> int:
    shapes = inferred_shapes(model, {"input": (1, 3, 32, 32)})
    return sum(node_macs(node, shapes) for node in model.graph)


def test_every_kind_has_units_and_levels_save(folded, data):
    space = Space(folded, LatencyTable("macs"), PassContext(data))
    kinds = {unit.kind for unit in space.units}
    assert kinds == {"prune", "lowrank", "int8"}
    for unit in space.units:
        if unit.kind != "int8":
            assert all(level.delta < 0 for level in unit.levels), unit.label


def test_single_pass_settings_map_onto_every_unit_they_can_change(folded, data):
    space = Space(folded, LatencyTable("macs"), PassContext(data))
    families = {(kind, method): strengths for kind, method, strengths in space.families()}
    assert families[("prune", None)] == tuple(sorted(RATIOS, reverse=True))  # strongest first
    assert families[("lowrank", "tucker")] == (0.5, 0.7, 0.85, 0.95)
    prune = space.uniform("prune", None, 0.5)
    assert set(prune) == {i for i, u in enumerate(space.units) if u.kind == "prune"}
    for index, level in prune.items():
        group = space.units[index].levels[level - 1].setting[1]
        assert space.units[index].levels[level - 1].setting[0] == group // 2  # half kept
    tucker = space.uniform("lowrank", "tucker", 0.7)
    assert tucker and all(
        space.units[i].levels[lv - 1].setting[0] == "tucker" for i, lv in tucker.items()
    )
    # A 1x1 conv has no tucker level: its unit is not in the choice.
    lowrank = {i for i, u in enumerate(space.units) if u.kind == "lowrank"}
    assert set(tucker) < lowrank
    assert space.uniform("lowrank", "cp", 0.7) == {}
    assert space.cost(space.uniform("prune", None, 0.75)) < space.cost(prune)


def test_a_single_pass_takes_its_setting_even_where_the_path_dropped_it(folded, data):
    """The path keeps a unit's useful levels only; ``prune{ratio=0.5}`` still prunes that
    unit at 0.5, from the levels whose sensitivity was measured, appended after the path's."""
    space = Space(folded, LatencyTable("macs"), PassContext(data), kinds=("prune",))
    index, unit = next((i, u) for i, u in enumerate(space.units) if len(u.levels) >= 3)
    half = next(lv for lv in unit.levels if lv.strength == 0.5)
    unit.measured = list(unit.levels)
    unit.levels = [lv for lv in unit.levels if lv is not half]  # what _useful may leave
    path_levels = list(unit.levels)
    level = space.uniform("prune", None, 0.5)[index]
    assert unit.levels[level - 1] is half
    assert unit.levels[: len(path_levels)] == path_levels  # the path's indices stand
    assert space.uniform("prune", None, 0.5)[index] == level  # appended once


def test_a_choice_is_priced_exactly_as_applied(folded, data):
    """Under the MAC objective, pruning and factorizing together (a pruned layer's chain has
    fewer channels at both ends) cost what the applied model counts."""
    space = Space(folded, LatencyTable("macs"), PassContext(data), kinds=("prune", "lowrank"))
    prune = [i for i, u in enumerate(space.units) if u.kind == "prune"][:3]
    lowrank = [i for i, u in enumerate(space.units) if u.kind == "lowrank"]
    touched = {n for i in prune for n in space.units[i].touches}
    both = next(i for i in lowrank if set(space.units[i].touches) & touched)
    choice = {**{i: 1 for i in prune}, both: 1}
    model, done = space.apply(choice)
    assert done["prune"]["channels_removed"] > 0 and done["lowrank"]["factorized"] == 1
    estimate = sum(space.table.chain(space.node_layers(n, choice)) for n in space.specs)
    assert estimate == pytest.approx(macs_of(model), rel=1e-6)
    assert macs_of(model) < macs_of(folded)


def test_applying_leaves_the_model_alone_and_runs(folded, data):
    space = Space(folded, LatencyTable("macs"), PassContext(data))
    before = [n.name for n in folded.graph]
    everything = {i: len(u.levels) for i, u in enumerate(space.units)}
    model, done = space.apply(everything)
    assert [n.name for n in folded.graph] == before
    assert done["int8"]["int8_ops"] > 0
    ops = {n.op_type for n in model.graph}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    (out,) = run(model, [{"input": data.arrays["input"][:4]}])
    assert np.isfinite(next(iter(out.values()))).all()


def test_ops_between_int8_layers_follow_them(folded):
    from lightir.quant.plan import quantizable_nodes

    nodes = quantizable_nodes(folded.graph, PassContext())
    convs = {n for n in nodes if n.op_type == "Conv"}
    assert between(nodes, set()) == set()
    follow = between(nodes, convs)
    assert follow and all(n.op_type != "Conv" for n in follow)


def test_unnamed_nodes_get_names():
    model = zoo.build("resnet")
    for node in list(model.graph)[:3]:
        node.name = ""
    assert name_nodes(model) == 3
    names = [n.name for n in model.graph]
    assert all(names) and len(set(names)) == len(names)


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_a_single_pass_setting_keeps_what_the_pass_keeps(ratio):
    """``uniform("prune", ratio)`` is ``prune{ratio=R}`` channel for channel, though the
    search's levels round to 8 and the pass to the measured block (digits at 0.6 with 16:
    16 of 32 and 16 of 48, where the level nearest 0.6 by ratio kept 24 of 48)."""
    model = lightir.optimize(zoo.digits(), "fold-bn").model
    name_nodes(model)
    images, _ = zoo.digits_test_split()
    data = CalibrationData({"input": images[:32]}).bind(input_specs(model))
    space = Space(model, LatencyTable("macs"), PassContext(data), kinds=("prune",), round_to=8)
    searched, _ = space.apply(space.uniform("prune", None, ratio))
    pruned = lightir.optimize(model, f"prune{{ratio={ratio}}}", verify="structural").model

    def widths(m):
        return [n.inputs[1].const_value.shape[0] for n in m.graph if n.op_type in ("Conv", "Gemm")]

    assert widths(pruned) != widths(model)  # the pass prunes
    assert widths(searched) == widths(pruned)


@pytest.mark.parametrize(
    "method, energy", [("svd", 0.5), ("spatial-svd", 0.7), ("tucker", 0.7), ("tucker", 0.5)]
)
def test_a_low_rank_single_pass_setting_is_what_the_pass_does(folded, data, method, energy):
    """``uniform("lowrank", method, E)`` factorizes the layers ``method{energy=E}`` does at
    its ranks: the pass rounds ranks its own way and takes every chain with fewer MACs and
    params, where the search's levels skip ranks rounded up to full and chains the table
    prices as no saving (MTCNN O-Net: two of the four layers spatial-svd{energy=0.7}
    factorizes)."""
    space = Space(folded, LatencyTable("latency"), PassContext(data), kinds=("lowrank",))
    searched, _ = space.apply(space.uniform("lowrank", method, energy))
    factorized = lightir.optimize(folded, f"{method}{{energy={energy}}}", verify="structural")

    def shapes(m):
        return sorted(
            tuple(n.inputs[1].const_value.shape) for n in m.graph if n.op_type in ("Conv", "Gemm")
        )

    assert shapes(factorized.model) != shapes(folded)  # the pass factorizes
    assert shapes(searched) == shapes(factorized.model)


def _reshaped_by_a_computed_shape() -> ir.Model:
    """x (N, 6, 8) reshaped by Shape -> Cast -> Floor -> Cast (inference loses it), then x @ W."""
    x = ir.val("x", ir.DataType.FLOAT, ["N", 6, 8])
    shape = ir.node("Shape", [x], name="shape").outputs[0]
    as_float = ir.node("Cast", [shape], attributes={"to": 1}, name="to_float").outputs[0]
    floor = ir.node("Floor", [as_float], name="floor").outputs[0]
    back = ir.node("Cast", [floor], attributes={"to": 7}, name="to_int").outputs[0]
    same = ir.node("Reshape", [x, back], name="reshape").outputs[0]
    same.name = "reshaped"
    rng = np.random.default_rng(0)
    w = ir.Value(name="w", const_value=ir.tensor(rng.standard_normal((8, 16)).astype(np.float32)))
    matmul = ir.node("MatMul", [same, w], name="matmul")
    y = matmul.outputs[0]
    y.name, y.dtype = "y", ir.DataType.FLOAT
    nodes = [v.producer() for v in (shape, as_float, floor, back, same)] + [matmul]
    graph = ir.Graph([x], [y], nodes=nodes, initializers=[w], opset_imports={"": 17})
    return ir.Model(graph, ir_version=9)


def test_a_layer_whose_input_shape_inference_loses_is_measured_on_one_sample():
    model = _reshaped_by_a_computed_shape()
    lost = inferred_shapes(model, {"x": (1, 6, 8)})["reshaped"]
    assert not all(isinstance(d, int) for d in lost)
    rows = np.random.default_rng(1).standard_normal((16, 6, 8)).astype(np.float32)
    calib = CalibrationData({"x": rows}).bind(input_specs(model))
    space = Space(model, LatencyTable("macs"), PassContext(calib), kinds=("int8",))
    (spec,) = space.specs.values()
    assert (spec.cin, spec.cout, spec.height) == (8, 16, 6)  # 6 rows of 8
    assert [u.kind for u in space.units] == ["int8"]
    # Without samples nothing is run: the layer has no spec, so no unit.
    blind = Space(model, LatencyTable("macs"), PassContext(), kinds=("int8",))
    assert not blind.specs and not blind.units
