from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

import lightir
from lightir import zoo
from lightir.testing import GraphBuilder, assert_outputs_close, declines, op_types


def reparam(model, pipeline="reparam"):
    result = lightir.optimize(model, pipeline)
    assert result.report.ok, result.report.failures
    return result


@pytest.mark.parametrize("name", zoo.REPARAM)
def test_train_time_zoo_reaches_deploy_form(name):
    model = zoo.build(name)
    out = reparam(model).model
    assert Counter(op_types(out)) == Counter(op_types(zoo.DEPLOY_FORMS[name]()))
    assert "BatchNormalization" not in op_types(out)
    assert assert_outputs_close(model, out, rtol=1e-5) < 1e-5


def block(branches, *, cin=8, cout=8, stride=1, groups=1, size=9, seed=0):
    """One Add tree of the named branches over a shared input."""
    b = GraphBuilder("block", seed=seed)
    x = b.input("x", ["batch", cin, size, size])
    terms = []
    for kind in branches:
        if kind == "3x3":
            terms.append(b.batch_norm(b.conv(x, cout, 3, stride=stride, groups=groups)))
        elif kind == "1x1":
            terms.append(
                b.batch_norm(b.conv(x, cout, 1, stride=stride, pads=[0] * 4, groups=groups))
            )
        elif kind == "identity":
            terms.append(b.batch_norm(x))
        elif kind == "dilated":
            terms.append(b.conv(x, cout, 3, stride=stride, dilation=2, bias=True))
        elif kind == "avgpool":
            pool = b.op(
                "AveragePool",
                [x],
                {
                    "kernel_shape": [3, 3],
                    "strides": [stride] * 2,
                    "pads": [1] * 4,
                    "count_include_pad": 1,
                },
            )
            terms.append(b.batch_norm(pool))
    total = terms[0]
    for term in terms[1:]:
        total = b.add(total, term)
    b.output(b.relu(total), "y")
    return b.build()


@pytest.mark.parametrize(
    ("branches", "kw"),
    [
        (["3x3", "1x1", "identity"], {}),
        (["3x3", "1x1", "identity"], {"groups": 4}),
        (["3x3", "1x1"], {"stride": 2, "cout": 12}),
        (["dilated", "1x1"], {}),
        (["3x3", "avgpool", "identity"], {"groups": 8}),
        (["1x1", "identity"], {}),
    ],
)
def test_branches_merge_into_one_conv(branches, kw):
    model = block(branches, **kw)
    out = reparam(model, "fold-bn,merge-branches,cleanup").model
    assert op_types(out) == ["Conv", "Relu"]
    conv = out.graph[0]
    if "groups" in kw:
        assert conv.attributes.get_int("group") == kw["groups"]
    assert_outputs_close(model, out, rtol=1e-5)


def test_constant_leaf_joins_the_bias():
    b = GraphBuilder("bias_leaf", seed=2)
    x = b.input("x", [1, 4, 6, 6])
    summed = b.add(b.conv(x, 4, 3), b.conv(x, 4, 1, pads=[0] * 4))
    shift = b.initializer(np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1))
    b.output(b.add(summed, shift), "y")
    model = b.build()
    out = reparam(model, "merge-branches,cleanup").model
    assert op_types(out) == ["Conv"]
    assert_outputs_close(model, out, rtol=1e-5)


# ---------------------------------------------------------------- must not fire
def test_declines_branch_with_another_consumer():
    b = GraphBuilder("busy", seed=3)
    x = b.input("x", [1, 4, 6, 6])
    point = b.conv(x, 4, 1, pads=[0] * 4)
    b.output(b.add(b.conv(x, 4, 3), point), "y")
    b.output(b.relu(point), "z")
    result = reparam(b.build(), "merge-branches")
    assert op_types(result.model).count("Conv") == 2
    assert any("other consumers" in d for d in declines(result))


def test_declines_nonlinearity_inside_a_branch():
    b = GraphBuilder("nonlinear", seed=4)
    x = b.input("x", [1, 4, 6, 6])
    b.output(b.add(b.conv(x, 4, 3), b.relu(b.conv(x, 4, 1, pads=[0] * 4))), "y")
    result = reparam(b.build(), "merge-branches")
    assert op_types(result.model).count("Conv") == 2
    assert any("Relu" in d and "not linear" in d for d in declines(result))


def test_declines_shared_weight():
    b = GraphBuilder("shared", seed=5)
    x = b.input("x", [1, 4, 6, 6])
    w = b.initializer(b.conv_weight(4, 4, (3, 3)))
    y = b.add(b.conv(x, 4, 3, weight=w), b.conv(x, 4, 1, pads=[0] * 4))
    b.output(b.add(y, b.conv(b.relu(x), 4, 3, weight=w)), "y")
    result = reparam(b.build(), "merge-branches")
    assert op_types(result.model).count("Conv") == 3
    assert any("shared" in d for d in declines(result))


def test_declines_different_strides_and_costlier_merges():
    b = GraphBuilder("strides", seed=6)
    x = b.input("x", [1, 4, 8, 8])
    y = b.add(b.conv(x, 4, 3, stride=2), b.conv(x, 4, 1, stride=2, pads=[0] * 4))
    b.output(y, "a")  # same strides: merges
    z = b.add(b.conv(x, 4, 3, groups=4), b.conv(x, 4, 1, pads=[0] * 4))
    b.output(z, "b")  # depthwise 3x3 + dense 1x1 -> dense 3x3 would cost more
    result = reparam(b.build(), "merge-branches")
    assert op_types(result.model).count("Conv") == 3
    assert any("would cost more" in d for d in declines(result))


def test_declines_padded_sequence_after_a_bias():
    """DBB's 1x1+BN -> 3x3 without the BN-and-pad trick is not exactly mergeable."""
    b = GraphBuilder("dbb_unpadded", seed=7)
    x = b.input("x", [1, 4, 6, 6])
    seq = b.conv(b.batch_norm(b.conv(x, 4, 1, pads=[0] * 4)), 4, 3)
    b.output(b.add(b.conv(x, 4, 3), seq), "y")
    model = b.build()
    result = reparam(model, "merge-branches")
    assert op_types(result.model).count("Conv") == 3
    assert any("cannot merge exactly" in d for d in declines(result))
    assert_outputs_close(model, result.model, rtol=1e-5)


@pytest.mark.parametrize("opset", [13, 15, 18, 21])
def test_exporter_noise_and_opsets(opset):
    """Identity, Cast-to-same-type and Constant nodes between branches, opsets 13-21."""
    b = GraphBuilder("noisy", seed=8, opset=opset)
    x = b.input("x", ["batch", 4, 8, 8])
    dense = b.op("Identity", [b.batch_norm(b.conv(x, 4, 3))])
    point = b.op("Cast", [b.batch_norm(b.conv(x, 4, 1, pads=[0] * 4))], {"to": 1})
    shift = b.op("Constant", [], {"value": ir.tensor(np.full((4, 1, 1), 0.5, np.float32))})
    y = b.add(b.add(dense, point), b.add(b.batch_norm(x), shift))
    b.output(b.relu(y), "y")
    model = b.build()
    out = reparam(model).model
    assert op_types(out) == ["Conv", "Relu"]
    assert_outputs_close(model, out, rtol=1e-5)


def test_dynamic_spatial_dims_merge_and_unknown_channels_do_not():
    b = GraphBuilder("dynamic", seed=9)
    x = b.input("x", ["batch", 4, "height", "width"])
    b.output(b.relu(b.add(b.conv(x, 4, 3), b.conv(x, 4, 1, pads=[0] * 4))), "y")
    model = b.build()
    result = lightir.optimize(model, "merge-branches", dims={"height": 7, "width": 5})
    assert result.report.ok and op_types(result.model) == ["Conv", "Relu"]
    assert_outputs_close(model, result.model, rtol=1e-5)

    b = GraphBuilder("unknown_channels", seed=10)
    x = b.input("x", ["batch", "channels", 6, 6])
    b.channels[x] = 4  # the builder needs a count for the weights; the graph keeps it symbolic
    b.output(b.add(b.batch_norm(x), b.conv(x, 4, 1, pads=[0] * 4)), "y")
    result = lightir.optimize(b.build(), "merge-branches", verify="structural")
    assert result.report.ok and "BatchNormalization" in op_types(result.model)
