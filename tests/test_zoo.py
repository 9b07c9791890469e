from __future__ import annotations

import numpy as np
import pytest

import lightir
from lightir import zoo
from lightir.testing import op_types, random_inputs, run


@pytest.mark.parametrize("name", zoo.SMALL)
def test_zoo_models_are_valid_deterministic_and_realistic(name):
    model = zoo.build(name)
    again = zoo.build(name)
    for key, value in model.graph.initializers.items():
        np.testing.assert_array_equal(
            value.const_value.numpy(), again.graph.initializers[key].const_value.numpy()
        )
    (outputs,) = run(model, random_inputs(model, samples=3))
    logits = outputs["logits"]
    assert logits.shape == (3, 10) and np.isfinite(logits).all() and logits.std() > 0.1
    # BN statistics are not the identity
    bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
    assert np.abs(bn.inputs[3].const_value.numpy()).max() > 0.01  # running mean
    assert np.abs(bn.inputs[4].const_value.numpy() - 1).max() > 0.01  # running variance
    assert str(model.graph.inputs[0].shape[0]) == "batch"


def test_zoo_shapes():
    assert op_types(zoo.build("resnet")).count("Add") == 6
    mobilenet = zoo.build("mobilenetv2")
    assert any(n.attributes.get_int("group", 1) > 1 for n in mobilenet.graph if n.op_type == "Conv")
    assert op_types(zoo.build("vgg")).count("Gemm") == 3
    assert op_types(zoo.build("repvgg")).count("Add") == 7  # 5 blocks, 2 with identity


def test_trained_digits_fixture_accuracy():
    model = zoo.build("digits")
    images, labels = zoo.digits_test_split()
    assert len(labels) == 450
    assert zoo.accuracy(model, images, labels) > 0.97
    folded = lightir.optimize(model, "fold-bn,cleanup", calib=zoo.digits_calibration_path())
    assert folded.report.ok
    assert "BatchNormalization" not in op_types(folded.model)
    assert zoo.accuracy(folded.model, images, labels) == zoo.accuracy(model, images, labels)
