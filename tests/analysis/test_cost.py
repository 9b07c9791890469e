"""The report's profile: op types and linear layers, int8 weights read through their DQ."""

from __future__ import annotations

import numpy as np

import lightir
from lightir import zoo
from lightir.analysis.cost import model_cost, model_profile

SHAPES = {"input": (1, 3, 32, 32)}


def test_the_layers_add_up_to_the_models_macs_and_params():
    model = lightir.optimize("zoo:resnet", "fold-bn", verify="structural").model
    profile = model_profile(model, SHAPES)
    cost = model_cost(model, SHAPES)
    assert sum(layer["macs"] for layer in profile["layers"]) == cost.macs
    assert sum(layer["params"] for layer in profile["layers"]) == cost.params
    assert profile["ops"]["Conv"] == 15 and "BatchNormalization" not in profile["ops"]


def test_int8_weights_are_found_behind_their_dequantize():
    rng = np.random.default_rng(0)
    calib = {"input": rng.standard_normal((16, 3, 32, 32)).astype(np.float32)}
    from lightir.data import CalibrationData

    model = lightir.optimize(zoo.resnet(), "int8", calib=CalibrationData(calib)).model
    layers = model_profile(model, SHAPES)["layers"]
    assert len(layers) == 16  # 15 convs and the classifier, none lost behind a DQ
    assert {layer["dtype"] for layer in layers} == {"int8"}
