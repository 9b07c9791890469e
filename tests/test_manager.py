from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import pytest

import lightir
from lightir import zoo
from lightir.errors import PassFailedError, UsageError
from lightir.testing import assert_outputs_close, op_types


def first_conv_weight(model):
    conv = next(n for n in model.graph if n.op_type == "Conv")
    return conv.inputs[1]


@pytest.fixture
def perturb_pass(throwaway_passes):
    @lightir.register_pass("perturb-one-weight", contract="exact")
    def perturb(model, context):
        """Deliberately wrong: change one element of the first conv weight."""
        value = first_conv_weight(model)
        array = value.const_value.numpy().copy()
        array.flat[0] += 0.5
        value.const_value = ir.tensor(array, name=value.name)
        return True

    return "perturb-one-weight"


@pytest.fixture
def raising_pass(throwaway_passes):
    @lightir.register_pass("always-raises", contract="exact")
    def always_raises(model, context):
        """Crashes halfway: removes a node first."""
        model.graph.remove(model.graph[len(model.graph) - 1], safe=False)
        raise RuntimeError("boom")

    return "always-raises"


@pytest.fixture
def dangling_pass(throwaway_passes):
    @lightir.register_pass("drop-first-relu", contract="exact")
    def drop_first_relu(model, context):
        """Breaks the structure: removes a node whose output is still used."""
        relu = next(n for n in model.graph if n.op_type == "Relu")
        model.graph.remove(relu, safe=False)
        return True

    return "drop-first-relu"


def test_wrong_pass_is_caught_and_rolled_back(perturb_pass):
    model = zoo.build("resnet")
    result = lightir.optimize(model, f"fold-bn,{perturb_pass},cleanup")
    report = result.report
    assert not report.ok
    assert [r.status for r in report.records] == ["changed", "rolled-back"]  # stopped
    (message,) = report.failures
    assert "perturb-one-weight" in message and "logits" in message and "rel error" in message
    assert "\n" not in message
    # the result is the model after fold-bn: equal to the original, without BN
    assert "BatchNormalization" not in op_types(result.model)
    assert_outputs_close(model, result.model, rtol=1e-5)


def test_keep_going_runs_the_rest(perturb_pass):
    result = lightir.optimize("zoo:vgg", f"{perturb_pass},fold-bn", keep_going=True)
    assert [r.status for r in result.report.records] == ["rolled-back", "changed"]
    assert not result.report.ok


def test_rollback_shares_weights_instead_of_copying(perturb_pass):
    model = zoo.build("vgg")
    result = lightir.optimize(model, perturb_pass)
    for name, value in model.graph.initializers.items():
        assert result.model.graph.initializers[name].const_value is value.const_value


def test_raising_pass_is_rolled_back(raising_pass):
    model = zoo.build("vgg")
    result = lightir.optimize(model, raising_pass)
    assert "raised RuntimeError: boom" in result.report.failures[0]
    assert op_types(result.model) == op_types(model)


def test_structure_breaking_pass_is_rolled_back(dangling_pass):
    model = zoo.build("vgg")
    result = lightir.optimize(model, dangling_pass, verify="structural")
    assert "broke the model structure" in result.report.failures[0]
    assert op_types(result.model) == op_types(model)


def test_tolerance_override_is_applied(perturb_pass):
    result = lightir.optimize("zoo:vgg", perturb_pass, tolerances={perturb_pass: 10.0})
    assert result.report.ok
    assert result.report.records[0].tolerance == "rel<=10"


def test_tolerance_for_unknown_pass_is_refused():
    with pytest.raises(UsageError, match="not in the pipeline"):
        lightir.optimize("zoo:vgg", "cleanup", tolerances={"fold-bn": 1e-3})


def test_verify_end_raises_on_final_drift(perturb_pass):
    with pytest.raises(PassFailedError, match="final check failed"):
        lightir.optimize("zoo:vgg", perturb_pass, verify="end")


def test_lossy_contract_budget_is_enforced(throwaway_passes):
    @dataclass(frozen=True)
    class Options:
        factor: float = 1.01

    @lightir.register_pass(
        "scale-logits",
        contract=lightir.Contract.lossy(rel_error=0.05, min_cosine=0.999),
        options=Options,
    )
    def scale_logits(model, context, options):
        """Scale the last Gemm's weight and bias (a stand-in for a lossy pass)."""
        gemm = [n for n in model.graph if n.op_type == "Gemm"][-1]
        for value in gemm.inputs[1:]:
            value.const_value = ir.tensor(
                value.const_value.numpy() * options.factor, name=value.name
            )
        return True

    assert lightir.optimize("zoo:vgg", "scale-logits{factor=1.01}").report.ok
    failed = lightir.optimize("zoo:vgg", "scale-logits{factor=1.2}").report
    assert not failed.ok and "lossy(rel<=0.05, cos>=0.999)" in failed.failures[0]


def test_drift_and_costs_are_reported():
    result = lightir.optimize("zoo:resnet", "fold-bn,cleanup")
    report = result.report
    assert report.original.nodes > report.final.nodes
    assert report.original.macs == report.final.macs > 0
    assert report.drift and report.drift[0].rel_error < 1e-5
    as_json = report.as_dict()
    assert as_json["ok"] and as_json["passes"][0]["stats"]["folded"] == 15


def test_calibration_file_feeds_verification(tmp_path):
    data = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=data)
    result = lightir.optimize("zoo:resnet", "fold-bn", calib=tmp_path / "calib.npz", samples=3)
    assert "calibration file" in result.report.inputs and "3 sample" in result.report.inputs


@pytest.mark.parametrize(("rows", "judged"), [(80, 32), (40, 20), (3, 2)])
def test_verification_holds_out_32_rows_and_passes_fit_on_the_rest(
    tmp_path, throwaway_passes, rows, judged
):
    seen = {}

    @lightir.register_pass("record-fit-rows", contract=lightir.Contract.lossy(min_cosine=0.9))
    class RecordFitRows(lightir.Pass):
        """Records the calibration rows it is given; changes nothing."""

        def run(self, model, context):
            seen["fit"] = context.calibration.arrays["input"]
            return lightir.PassResult(model, modified=False)

    data = np.random.default_rng(0).standard_normal((rows, 3, 32, 32)).astype(np.float32)
    data[:, 0, 0, 0] = np.arange(rows)  # each row names itself
    np.savez(tmp_path / "calib.npz", input=data)
    report = lightir.optimize("zoo:resnet", "record-fit-rows", calib=tmp_path / "calib.npz").report
    assert f"{judged} sample(s)" in report.inputs
    fit = sorted(int(v) for v in seen["fit"][:, 0, 0, 0])
    # The rows verification judges are not fit on, unless the file is too small to split.
    assert fit == (list(range(judged, rows)) if rows >= 2 * judged else list(range(rows)))


def test_calibration_file_with_wrong_shape_is_refused(tmp_path):
    np.savez(tmp_path / "calib.npz", input=np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(lightir.InputError, match="axis 2 is 16, the model expects 32"):
        lightir.optimize("zoo:resnet", "fold-bn", calib=tmp_path / "calib.npz")


def test_passes_never_touch_the_callers_model_types_or_shapes():
    """ir.Model.clone shares type objects; lightir's copies must not (fp16 retypes values)."""
    model = zoo.build("digits")
    before = [(v.name, v.dtype, v.shape) for n in model.graph for v in n.outputs]
    outputs = [(v.name, v.dtype, v.shape) for v in model.graph.outputs]
    result = lightir.optimize(
        model, "fold-bn,fp16,prune{ratio=0.3}", tolerances={"prune": "cos:-1"}
    )
    assert result.report.ok, result.report.failures
    assert [(v.name, v.dtype, v.shape) for n in model.graph for v in n.outputs] == before
    assert [(v.name, v.dtype, v.shape) for v in model.graph.outputs] == outputs


# A model onnxruntime cannot run (an op of an unknown domain): any onnxruntime run on it fails.
UNRUNNABLE = """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
g (float[1, 3, 8, 8] x) => (float[1, 3, 8, 8] y) {
    h = Relu(x)
    y = com.example.Foo(h)
}"""


def test_context_preconditions_fail_before_any_onnxruntime_run():
    from lightir.testing import from_text

    model = from_text(UNRUNNABLE)
    with pytest.raises(lightir.InputError, match="onnxruntime cannot run the input model"):
        lightir.optimize(model, "fold-bn")  # what the first onnxruntime run says
    for pipeline in ("prune{refit=true}", "tucker{tol=0.1}", "cleanup,spatial-svd{refit=true}"):
        with pytest.raises(UsageError, match="needs calibration data"):
            lightir.optimize(model, pipeline)


def test_a_model_dependent_precondition_is_a_decline(throwaway_passes):
    @lightir.register_pass("needs-lstm", contract="exact")
    class NeedsLstm(lightir.Pass):
        """Declines models without an LSTM."""

        def requires(self, model, context):
            if not any(n.op_type == "LSTM" for n in model.graph):
                raise lightir.PassDeclined("the model has no LSTM")

        def run(self, model, context):
            raise AssertionError("run() is not reached when requires() declines")

    result = lightir.optimize("zoo:vgg", "fold-bn,needs-lstm")
    assert result.report.ok and result.report.record("needs-lstm").status == "declined"
    assert "the model has no LSTM" in result.report.record("needs-lstm").message
