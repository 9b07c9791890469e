from __future__ import annotations

import contextlib

import onnx

import lightir
from lightir.testing import GraphBuilder, assert_outputs_close


def conv_model(opset: int):
    b = GraphBuilder("conv", seed=3, opset=opset)
    x = b.input("x", ["batch", 3, 8, 8])
    b.output(b.relu(b.conv(x, 8, 3, bias=True)), "y")
    return b.build()


def test_int8_on_opset_11_gets_a_verified_upgrade_first(tmp_path):
    model = conv_model(11)
    result = lightir.optimize(model, "int8")
    report = result.report
    assert report.ok, report.failures
    fold, upgrade, int8 = report.records  # fold-bn: int8's prerequisite
    assert (
        fold.name == "fold-bn"
        and upgrade.name == "upgrade-opset"
        and upgrade.stats == {"opset": "11 -> 13"}
    )
    assert upgrade.vs_previous and upgrade.tolerance  # verified like any exact pass
    assert int8.status == "changed"
    assert result.model.opset_imports[""] == 13
    lightir.save(result.model, tmp_path / "q.onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "q.onnx"), full_check=True)
    assert model.opset_imports[""] == 11  # the caller's model is left alone


def test_no_upgrade_when_the_opset_is_new_enough():
    result = lightir.optimize(conv_model(17), "int8")
    assert [r.name for r in result.report.records] == ["fold-bn", "int8"]


def test_explicit_upgrade_is_exact_and_a_newer_model_is_unchanged():
    model = conv_model(12)
    result = lightir.optimize(model, "upgrade-opset{version=17}")
    assert result.report.records[0].status == "changed"
    assert result.model.opset_imports[""] == 17
    assert_outputs_close(model, result.model, rtol=1e-6)
    again = lightir.optimize(result.model, "upgrade-opset{version=13}")
    assert again.report.records[0].status == "unchanged"


@contextlib.contextmanager
def registered(name, pass_or_function):
    from lightir.registry import register_pass, unregister

    register_pass(name, contract="exact", replace=True)(pass_or_function)
    try:
        yield
    finally:
        unregister(name)


def test_a_pass_can_decline_and_the_run_goes_on():
    from lightir.errors import PassDeclined

    def already_quantized(model, context):
        raise PassDeclined("the model is already quantized (ConvInteger)")

    with registered("decliner", already_quantized):
        result = lightir.optimize(conv_model(17), "decliner,fold-bn")
    first, second = result.report.records
    assert first.status == "declined" and "already quantized" in first.message
    assert second.name == "fold-bn" and result.report.ok


def test_a_pass_needing_an_opset_onnx_lacks_is_declined():
    from lightir.pass_base import Pass

    class Future(Pass):
        min_opset = onnx.defs.onnx_opset_version() + 1

        def run(self, model, context):
            raise AssertionError("must not run")

    with registered("future-op", Future):
        result = lightir.optimize(conv_model(17), "future-op")
    (record,) = result.report.records
    assert record.status == "declined" and "knows opsets up to" in record.message
    assert result.report.ok
