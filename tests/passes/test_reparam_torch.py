"""Networks exported by PyTorch in train-time form reach their deploy form under reparam.

Fixtures: tools/export_repvgg_torch.py exports one RepVGG network with the TorchScript
exporter and with the dynamo exporter, in train-time form and after the per-repository
PyTorch ``switch_to_deploy`` conversion.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import lightir
from lightir.testing import assert_outputs_close, op_types

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("suffix", ["", "_dynamo"])
def test_pytorch_export_reaches_deploy_form(suffix):
    train = lightir.load(FIXTURES / f"repvgg_torch_train{suffix}.onnx")
    deploy = lightir.load(FIXTURES / f"repvgg_torch_deploy{suffix}.onnx")
    assert op_types(train).count("BatchNormalization") > 0
    result = lightir.optimize(train, "reparam")
    assert result.report.ok, result.report.failures
    assert Counter(op_types(result.model)) == Counter(op_types(deploy))
    assert assert_outputs_close(train, result.model, rtol=1e-5) < 1e-5
    # Same function as PyTorch's own conversion, up to float32 rounding on both sides.
    assert_outputs_close(deploy, result.model, rtol=1e-5)
