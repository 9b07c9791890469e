"""Channel groups checked channel by channel, and pruning checked against masking.

Removing a set of channels must compute exactly what the original model computes when the
weight columns that read those channels are zeroed: that is the reference for the slicing.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest

from lightir import zoo
from lightir.analysis.channels import ChannelGraph
from lightir.ir_util import clone_model
from lightir.pass_base import PassContext
from lightir.passes.prune import Options
from lightir.prune.plan import PrunePlanner
from lightir.prune.surgery import remove_components
from lightir.testing import GraphBuilder, assert_outputs_close


def analyse(model):
    common_passes.ShapeInferencePass()(model)
    graph = ChannelGraph(model)
    groups, frozen = graph.groups()
    return graph, {g.producer_nodes: g for g in groups}, frozen


def component_of(graph, value_name, channel):
    for component in graph.components():
        if (value_name, channel) in component.channels:
            return set(component.channels)
    raise AssertionError(f"{value_name}[{channel}] not found")


def test_residual_channels_are_tied_across_the_stage():
    model = zoo.build("resnet")
    graph, groups, _ = analyse(model)
    stage = groups[("conv_0", "conv_2", "conv_4")]
    assert stage.size == 32
    for c in (0, 17, 31):
        members = component_of(graph, "add_0_out", c)
        assert {
            ("conv_0_out", c),
            ("conv_2_out", c),
            ("add_1_out", c),
            ("relu_0_out", c),
        } <= members
        assert all(ch == c for _, ch in members)  # never mixes channel indices


def test_concat_offsets_and_split_sizes():
    b = GraphBuilder("concat", seed=1)
    x = b.input("x", [1, 3, 6, 6])
    left, right = b.relu(b.conv(x, 4, 3)), b.relu(b.conv(x, 6, 3))
    cat = b.op("Concat", [left, right], {"axis": 1}, channels=10)
    sizes = b.initializer(np.array([5, 5], np.int64))
    first = b.op("Split", [cat, sizes], {"axis": 1}, num_outputs=2, channels=5)
    second = first.producer().outputs[1]
    b.output(b.add(b.conv(first, 4, 1, pads=[0] * 4), b.conv(second, 4, 1, pads=[0] * 4)), "y")
    model = b.build()
    graph, groups, _ = analyse(model)
    assert component_of(graph, "conv_1_out", 2) >= {("concat_0_out", 6), ("split_0_out1", 1)}
    assert component_of(graph, "conv_0_out", 3) >= {("concat_0_out", 3), ("split_0_out0", 3)}
    check_prune_equals_masking(model, ratio=0.5, round=1, protect_first=False)


def test_depthwise_couples_input_and_output():
    model = zoo.build("mobilenetv2")
    graph, groups, _ = analyse(model)
    expand = groups[("conv_3",)]
    members = component_of(graph, "conv_3_out", 5)
    assert ("conv_4_out", 5) in members  # the depthwise conv's output channel 5
    assert expand.size == 64


def se_block():
    b = GraphBuilder("se", seed=2)
    x = b.input("x", [1, 3, 8, 8])
    feat = b.relu(b.conv(x, 16, 3))
    gate = b.global_avg_pool(feat)
    gate = b.relu(b.conv(gate, 4, 1, pads=[0] * 4, bias=True))
    gate = b.op("Sigmoid", [b.conv(gate, 16, 1, pads=[0] * 4, bias=True)])
    scaled = b.op("Mul", [feat, gate])
    b.output(b.global_avg_pool(b.conv(scaled, 8, 3)), "y")
    return b.build()


def test_se_gate_ties_gate_and_features():
    model = se_block()
    graph, groups, _ = analyse(model)
    assert ("conv_0", "conv_2") in groups  # features and the gate's expanding conv, together
    members = component_of(graph, "conv_0_out", 9)
    assert {("sigmoid_0_out", 9), ("mul_0_out", 9), ("globalaveragepool_0_out", 9)} <= members
    check_prune_equals_masking(model, ratio=0.5, round=1, protect_first=False)


def test_flatten_maps_a_channel_to_a_block_of_features():
    model = zoo.build("vgg")
    graph, groups, _ = analyse(model)
    members = component_of(graph, "conv_4_out", 2)
    flat = sorted(ch for name, ch in members if name == "flatten_0_out")
    assert flat == list(range(2 * 16, 3 * 16))  # 4x4 spatial block of channel 2
    check_prune_equals_masking(model, ratio=0.3)


def test_unknown_ops_freeze_their_channels():
    b = GraphBuilder("custom", seed=3)
    x = b.input("x", [1, 3, 6, 6])
    y = b.conv(b.conv(x, 8, 3), 8, 3)
    z = b.op("MyOp", [y], domain="com.example", channels=8)
    b.output(b.conv(z, 4, 1, pads=[0] * 4), "out")
    model = b.build()
    model.opset_imports["com.example"] = 1
    graph, groups, frozen = analyse(model)
    reasons = {g.producer_nodes: r for g, r in frozen}
    assert "MyOp" in reasons[("conv_1",)]
    assert ("conv_0",) in groups  # the channels between the two convs stay prunable


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "repvgg", "concatnet"])
def test_zoo_pruning_equals_masking(name):
    check_prune_equals_masking(zoo.build(name), ratio=0.3)


def check_prune_equals_masking(model, **options):
    options.setdefault("compensate", False)
    pruned = clone_model(model)
    common_passes.ShapeInferencePass()(pruned)
    groups, _ = ChannelGraph(pruned).groups()
    removed = PrunePlanner(pruned, groups, Options(**options), PassContext(), None).plan()
    assert removed, "nothing was pruned"
    masked = clone_model(model)
    by_name = {n.name: n for n in masked.graph}
    for component in removed:
        for node, index in component.consumers:
            target = by_name[node.name]
            weight = target.inputs[1].const_value.numpy().copy()
            if target.op_type == "Conv":
                weight[:, index] = 0
            elif target.op_type == "Gemm" and target.attributes.get_int("transB", 0):
                weight[:, index] = 0
            else:
                weight[index] = 0
            target.inputs[1].const_value = ir.tensor(weight, name=target.inputs[1].name)
    remove_components(pruned, removed, compensate=options["compensate"])
    assert_outputs_close(masked, pruned, rtol=1e-5)
    return pruned


def _paddle_style_block(b, x, se_axes, slice_axis):
    """GELU as Paddle exports it (Erf), an SE gate through ReduceMean, a Slice and a Pow."""
    y = b.conv(x, 8, 3)
    half = b.op("Div", [y, b.initializer(np.array(1.41421356, np.float32), "sqrt2")])
    erf = b.op("Erf", [half])
    one = b.op("Add", [erf, b.initializer(np.array(1.0, np.float32), "one")])
    gelu = b.op("Mul", [b.op("Mul", [y, one]), b.initializer(np.array(0.5, np.float32), "h")])
    pooled = b.op("ReduceMean", [gelu], {"axes": se_axes, "keepdims": 1})  # opset 17
    gate = b.op("Sigmoid", [b.conv(b.relu(b.conv(pooled, 4, 1, pads=[0] * 4)), 8, 1, pads=[0] * 4)])
    gated = b.op("Mul", [gelu, gate])
    squared = b.op("Pow", [gated, b.initializer(np.array(2.0, np.float32), "two")])
    starts = b.initializer(np.array([0], np.int64), "st")
    ends = b.initializer(np.array([4], np.int64), "en")
    sliced = b.op("Slice", [squared, starts, ends, b.initializer(np.array([slice_axis], np.int64))])
    return b.conv(sliced, 4, 1, pads=[0] * 4)


def test_erf_gelu_se_reduce_mean_pow_and_spatial_slice_keep_channels():
    b = GraphBuilder("paddle", seed=5)
    b.output(_paddle_style_block(b, b.input("x", [1, 3, 8, 8]), [2, 3], 2), "out")
    graph, groups, frozen = analyse(b.build())
    assert ("conv_0", "conv_2") in groups, [r for _, r in frozen]  # tied by the SE gate
    members = component_of(graph, "conv_0_out", 3)
    assert any(name.startswith("slice") for name, _ in members)


@pytest.mark.parametrize(
    "se_axes, slice_axis, reason",
    [
        ([1], 2, "reduces the channel axis"),
        ([2, 3], 1, "slices the channel axis"),
    ],
)
def test_reductions_and_slices_over_channels_stay_frozen(se_axes, slice_axis, reason):
    b = GraphBuilder("paddle", seed=5)
    b.output(_paddle_style_block(b, b.input("x", [1, 3, 8, 8]), se_axes, slice_axis), "out")
    graph, groups, frozen = analyse(b.build())
    assert any(reason in r for _, r in frozen)


def _grouped_block(group_width=4, groups=4):
    """A RegNet X block without the residual: 1x1 -> Relu -> grouped 3x3 -> Relu -> 1x1."""
    b = GraphBuilder("xblock", seed=4)
    x = b.input("x", [1, 3, 6, 6])
    stem = b.relu(b.conv(x, 8, 3))
    width = group_width * groups
    y = b.relu(b.conv(stem, width, 1, pads=[0] * 4))
    y = b.relu(b.conv(y, width, 3, groups=groups))
    b.output(b.conv(y, 8, 1, pads=[0] * 4), "y")
    return b.build()


def test_a_grouped_conv_loses_whole_groups():
    """RegNet's grouped convs (a fixed group width) were frozen, so pruning barely touched a
    RegNetX (MACs 0.89 at ratio 0.3). A group's input block, rows and output block now form
    one component: the width stays, the group count drops, and the result equals masking."""
    model = _grouped_block()
    graph, groups, _ = analyse(model)
    block = groups[("conv_1", "conv_2")]
    assert block.size == 4  # four groups, not sixteen channels
    assert component_of(graph, "relu_1_out", 5) == (
        {("relu_1_out", c) for c in range(4, 8)}
        | {("conv_1_out", c) for c in range(4, 8)}
        | {("conv_2_out", c) for c in range(4, 8)}
        | {("relu_2_out", c) for c in range(4, 8)}
    )
    pruned = check_prune_equals_masking(
        model, ratio=0.5, round=4, protect_first=False, protect_last=False
    )
    grouped = next(n for n in pruned.graph if n.name == "conv_2")
    assert grouped.attributes.get_int("group") == 2
    assert list(grouped.inputs[1].const_value.shape) == [8, 4, 3, 3]


def test_a_grouped_conv_on_a_graph_input_keeps_its_groups():
    """Removing a group removes its input block too: a grouped conv reading the graph input
    (channels no pass may remove) keeps every group."""
    b = GraphBuilder("on_input", seed=5)
    x = b.input("x", [1, 8, 6, 6])
    y = b.relu(b.conv(x, 8, 3, groups=2))
    b.output(b.conv(b.relu(b.conv(y, 8, 1, pads=[0] * 4)), 4, 1, pads=[0] * 4), "y")
    model = b.build()
    _, groups, frozen = analyse(model)
    assert not any("conv_0" in key for key in groups)
    assert any("conv_0" in g.producer_nodes and "graph input" in r for g, r in frozen)
