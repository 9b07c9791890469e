"""Real int8 through TVM (issue 17, item 1): QDQ convs and matmuls become integer ones."""

from __future__ import annotations

import re
import tempfile

import numpy as np
import onnx_ir as ir
import pytest

import lightir
from lightir.testing import GraphBuilder, random_inputs, run

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from lightir.lowering import compile_model, load  # noqa: E402
from lightir.lowering.integer import integer_qdq  # noqa: E402


def conv_gemm(depthwise: bool = False) -> ir.Model:
    """A padded conv on a signed input (uint8 zero point near 128), a strided grouped or
    dense conv, then a Gemm: every padding and zero-point case of the rewrite."""
    b = GraphBuilder("conv_gemm", seed=0)
    x = b.input("x", [1, 8, 10, 10])
    h = b.conv(x, 8, 3, bias=True)  # pad 1, input N(0, 1): zero point about 128
    h = b.conv(h, 8, 3, bias=True, stride=2, groups=8 if depthwise else 1)
    b.output(b.gemm(b.flatten(h), 10, in_features=8 * 5 * 5), "y")
    return b.build()


def integer_convs(module) -> list[str]:
    return [
        line
        for line in module.script().splitlines()
        if ("conv2d(" in line or "matmul(" in line) and 'out_dtype="int32"' in line
    ]


def imported(model: ir.Model):
    spec = model.graph.inputs[0]
    return from_onnx(ir.to_proto(model), shape_dict={spec.name: [int(d) for d in spec.shape]})


def quantized_output_step(model: ir.Model) -> float:
    """The quantization step of the last activation before the float output Gemm."""
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    dq = gemm.inputs[0].producer()
    assert dq.op_type == "DequantizeLinear"
    return float(dq.inputs[1].const_value.numpy())


@pytest.mark.parametrize("depthwise", [False, True])
def test_qdq_convs_and_gemm_become_integer_and_match_onnxruntime_int8(tmp_path, depthwise):
    model = lightir.optimize(conv_gemm(depthwise), "int8").model
    rewritten, count = integer_qdq(imported(model))
    assert count == 3
    lines = integer_convs(rewritten)
    assert len(lines) == 3
    assert all(line.split(" = ")[0].endswith('dtype="int32")') for line in lines)
    # The first conv's input has a zero point and padding: its shift varies near the border.
    assert any(
        "R.subtract(" in line and '(1, 8, 10, 10), dtype="int32"' in line
        for line in rewritten.script().splitlines()
    )
    result = compile_model(model, tmp_path / "q.so", "x86")
    assert result.metadata["integer_ops"] == 3
    vnni = result.metadata["vnni"]
    assert vnni["kernels"] >= 3 and 0 <= vnni["vpdpbusd"] <= vnni["kernels"]
    assert result.checked and result.rel_error <= result.tolerance
    # Within one quantization step of onnxruntime's int8 run, element by element, on inputs
    # the build's check did not use.
    feeds = random_inputs(model, samples=3, seed=7)
    expected = run(model, feeds)
    library = load(tmp_path / "q.so")
    weights = next(n for n in model.graph if n.op_type == "Gemm").inputs[1].producer()
    w_scale = np.abs(weights.inputs[1].const_value.numpy()).max()
    w_codes = np.abs(weights.inputs[0].const_value.numpy().astype(np.int64)).sum(axis=1).max()
    # One step of the Gemm's input moves an output by at most step * sum|w|.
    bound = quantized_output_step(model) * w_scale * w_codes
    for feed, want in zip(feeds, expected):
        got = library.run_dict(feed)["y"]
        assert np.abs(got - want["y"]).max() <= bound


def test_float_model_and_foreign_qdq_are_left_alone():
    """Nothing to rewrite in a float model; a weight with a non-zero zero point (not lightir's
    symmetric form) stays float fake-quant, and the build still matches onnxruntime."""
    float_model = conv_gemm()
    module, count = integer_qdq(imported(float_model))
    assert count == 0 and not integer_convs(module)

    model = lightir.optimize(conv_gemm(), "int8").model
    first_conv = next(n for n in model.graph if n.op_type == "Conv")
    weight_dq = first_conv.inputs[1].producer()
    codes = weight_dq.inputs[0]
    assert codes.const_value.dtype == ir.DataType.INT8
    zero = ir.Value(name="w_zero_nonzero", const_value=ir.tensor(np.int8(3)))
    model.graph.register_initializer(zero)
    if len(weight_dq.inputs) < 3:
        weight_dq.resize_inputs(3)
    weight_dq.replace_input_with(2, zero)
    if "axis" in weight_dq.attributes:  # a scalar zero point needs a scalar scale
        scale = weight_dq.inputs[1].const_value.numpy()
        weight_dq.replace_input_with(
            1,
            _initializer(model, "w_scale_scalar", np.float32(scale.max())),
        )
        del weight_dq.attributes["axis"]
    module, count = integer_qdq(imported(model))
    assert count == 2  # the second conv and the Gemm; the first conv stays float
    assert sum('out_dtype="int32"' in line for line in module.script().splitlines()) == 2
    pipeline = relax.get_pipeline("zero")
    target = tvm.target.Target("llvm")
    with target:
        executable = tvm.compile(pipeline(module), target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    feed = random_inputs(model, samples=1, seed=3)[0]
    got = vm["main"](tvm.runtime.tensor(feed["x"])).numpy()
    want = run(model, [feed])[0]["y"]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def _initializer(model: ir.Model, name: str, array) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(np.asarray(array)))
    model.graph.register_initializer(value)
    return value


def test_fake_quant_can_still_be_asked_for(tmp_path):
    model = lightir.optimize("zoo:digits", "reparam,int8").model
    result = compile_model(model, tmp_path / "f.so", "x86", integer=False)
    assert result.metadata["integer_ops"] == 0
    assert result.checked and result.rel_error <= result.tolerance


def _run(module, feed: np.ndarray) -> np.ndarray:
    target = tvm.target.Target("llvm")
    with target:
        executable = tvm.compile(relax.get_pipeline("zero")(module), target)
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(feed))
    return out.numpy()


def test_nhwc_keeps_every_value_and_transposes_only_at_the_ends():
    """Elementwise Q/DQ carry NHWC from conv to conv: the values are the NCHW build's, and
    the only activation transposes are at the input and before the Gemm's flatten."""
    from lightir.lowering.integer import elementwise_qdq, nhwc

    model = lightir.optimize(conv_gemm(), "int8").model
    module, _ = integer_qdq(imported(model))
    converted = nhwc(module)
    text = converted.script()
    assert text.count('data_layout="NHWC"') == 2
    activations = [
        line
        for line in text.splitlines()
        if "R.permute_dims(" in line and "metadata[" not in line and "(1, 1, 1," not in line
    ]
    assert len(activations) == 2, activations
    feed = random_inputs(model, samples=1, seed=5)[0]["x"]
    want = _run(module, feed)
    assert np.array_equal(_run(elementwise_qdq(module), feed), want)
    assert np.abs(_run(converted, feed) - want).max() <= 1e-6 * np.abs(want).max()


@pytest.mark.parametrize("depthwise", [False, True])
def test_vnni_layout_blocks_dense_convs_and_gemm_and_keeps_every_value(depthwise):
    """Blocked weights compute the NHWC build's values exactly; a grouped conv (depthwise)
    is left as it was."""
    from lightir.lowering.integer import nhwc, vnni_layout

    model = lightir.optimize(conv_gemm(depthwise), "int8").model
    module, _ = integer_qdq(imported(model))
    converted = nhwc(module)
    blocked = vnni_layout(converted)
    text = blocked.script()
    assert text.count("def conv2d_vnni") == (1 if depthwise else 2)
    assert text.count("def matmul_vnni") == 1
    assert ("R.nn.conv2d(" in text) == depthwise
    feed = random_inputs(model, samples=1, seed=7)[0]["x"]
    assert np.array_equal(_run(blocked, feed), _run(converted, feed))
    # The blocked op's requantize epilogue is fused into its kernel, as the NHWC op's is:
    # an alias binding left behind by the rewrite is opaque to FuseOps and split them.
    with tvm.target.Target("llvm"):
        fused = relax.get_pipeline("zero")(blocked)
    kernels = [gvar.name_hint for gvar in fused.functions if "_vnni" in gvar.name_hint]
    assert kernels and all(re.match(r"fused_(conv2d|matmul)_vnni\d*_", k) for k in kernels)


def test_an_integer_build_that_disagrees_gives_way_to_fake_quant(tmp_path, monkeypatch):
    """A wrong integer build (here: the border share of the zero point left out) fails the
    check; the library written is the float fake-quant build, and the result says why."""
    from lightir.lowering import integer

    monkeypatch.setattr(
        integer, "_inside", lambda size, kernel, out, *rest: np.ones((*kernel, *out), np.int64)
    )
    model = lightir.optimize(conv_gemm(), "int8").model
    result = compile_model(model, tmp_path / "q.so", "x86")
    assert result.metadata["integer_ops"] == 0
    assert "disagrees with onnxruntime" in result.metadata["integer_fallback"]
    # Judged per quantized tensor too (lightir.lowering.stepwise): many steps off, not a tie.
    assert "per quantized tensor" in result.metadata["integer_fallback"]
    assert any("built as float fake-quant" in note for note in result.notes)
    assert result.checked and result.rel_error <= result.tolerance
    assert load(tmp_path / "q.so").metadata["integer_fallback"]


def test_the_check_runs_on_calibration_rows_when_given(tmp_path):
    """With calibration data the library is checked on its rows (in the model's working
    range) and the metadata says which inputs the check used."""
    from lightir.data import CalibrationData

    model = lightir.optimize(conv_gemm(), "int8").model
    rows = np.random.default_rng(9).standard_normal((4, 8, 10, 10)).astype(np.float32)
    result = compile_model(
        model, tmp_path / "q.so", "x86", calib=CalibrationData({"x": rows}), samples=3
    )
    assert result.checked_with == "calibration"
    assert result.metadata["check"]["inputs"] == "calibration"
    assert result.metadata["integer_ops"] == 3
    plain = compile_model(model, tmp_path / "p.so", "x86")
    assert plain.checked_with == "synthesized"


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            return "avx512_vnni" in handle.read()
    except OSError:
        return False


def _random_args(func, rng) -> list[np.ndarray]:
    arrays = []
    for param in func.params:
        shape, dtype = [int(d) for d in param.shape], str(param.dtype)
        if dtype.startswith(("int", "uint")):
            info = np.iinfo(dtype)
            low, high = max(info.min, -100), min(info.max, 100) if dtype == "int32" else info.max
            arrays.append(rng.integers(low, high, shape, endpoint=True).astype(dtype))
        else:
            # Powers of two: the epilogue's (acc - shift) * scale + bias is then exact, so a
            # tuned kernel that contracts it into an FMA (one rounding, not two) computes the
            # same bits, and any difference is the integer accumulation's.
            arrays.append((2.0 ** rng.integers(-7, -3, shape)).astype(dtype))
    return arrays


def test_vnni_tensorized_conv_schedules_all_build_and_compute_the_untuned_result():
    """MetaSchedule's VNNI sketches of a blocked-weight int8 conv (``vnni_layout``),
    postprocessed with lightir's tuning postprocessors for several random vectorize/unroll
    choices: every one is tensorized and builds, and run on a VNNI CPU computes exactly
    what the untuned kernel computes. Each of the three fixes is needed: on OHWI weights
    tensorize matches nothing; without ``serial_tensorized`` the vectorizer wraps the dot
    product and lowering stops ("VectorizeLoop before LiftStorageAlloc"); with TVM's own
    intrinsic LLVM 22 rejects the call ("Call parameter type does not match")."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    from lightir.lowering.integer import _vnni_by_kernel, nhwc, vnni_layout
    from lightir.lowering.tuning import (
        TENSORIZED_OUTER,
        _tune_contexts,
        _x86_intrinsics_only,
        fast_build,
    )
    from lightir.lowering.tvm_backend import accurate_reductions

    b = GraphBuilder("conv16", seed=3)
    b.output(b.conv(b.input("x", [1, 16, 8, 8]), 32, 3, bias=True), "y")
    model = lightir.optimize(b.build(), "int8").model
    module, count = integer_qdq(imported(model))
    assert count == 1
    target = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    with target:
        fused = relax.get_pipeline("zero")(vnni_layout(accurate_reductions(nhwc(module))))
    tasks = [
        t for t in ms.relax_integration.extract_tasks(fused, target) if "conv2d" in t.task_name
    ]
    assert len(tasks) == 1
    with _x86_intrinsics_only(), tempfile.TemporaryDirectory() as work:
        (context,), _ = _tune_contexts(tasks, work)
        sketches = context.space_generator.generate_design_space(context.mod)
        postprocs = list(context.space_generator.postprocs)
    tensorized = [s for s in sketches if "dot_16x4_vnni" in str(s.trace)]
    assert tensorized, "no VNNI sketch for an NHWC u8 x s8 conv"

    func = context.mod["main"]
    args = _random_args(func, np.random.default_rng(0))
    untuned = fast_build(context.mod, target, None)
    built = 0
    for sketch in tensorized:
        for seed in range(1, 5):
            sch = Schedule(context.mod, seed=seed)
            sketch.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=None)
            assert all(p.apply(sch) for p in postprocs)
            assert TENSORIZED_OUTER in sch.mod.script()
            library = fast_build(sch.mod, target, None)  # raised before serial_tensorized
            asm = library.inspect_source("asm")
            assert "vpdpbusd" in asm
            # The kernel (here "main") launches a parallel lambda that holds the dot product:
            # the count credits the kernel with it.
            assert _vnni_by_kernel(asm.replace("main_compute_", "fused_conv2d_vnni_")) == {
                "fused_conv2d_vnni_": True
            }
            built += 1
            if _has_vnni():
                want = [tvm.runtime.tensor(a) for a in args]
                got = [tvm.runtime.tensor(a) for a in args]
                untuned(*want)
                library(*got)
                assert np.array_equal(got[-1].numpy(), want[-1].numpy())
    assert built == 4 * len(tensorized)


def test_a_candidate_with_the_pad_inlined_into_the_vnni_block_is_rejected():
    """The search may inline a conv's zero pad into the block marked for VNNI (its reads
    become if_then_else); the dot product cannot match that, and RewriteTensorize would only
    warn and leave plain loops to be measured. lightir's postprocessor rejects the candidate;
    the same sketch without the inlining passes."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    from lightir.lowering.integer import nhwc, vnni_layout
    from lightir.lowering.tuning import _tune_contexts, _x86_intrinsics_only, serial_tensorized

    b = GraphBuilder("conv16", seed=3)
    b.output(b.conv(b.input("x", [1, 16, 8, 8]), 32, 3, bias=True), "y")  # pad 1
    model = lightir.optimize(b.build(), "int8").model
    module, _ = integer_qdq(imported(model))
    target = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    with target:
        fused = relax.get_pipeline("zero")(vnni_layout(nhwc(module)))
    (task,) = [
        t for t in ms.relax_integration.extract_tasks(fused, target) if "conv2d" in t.task_name
    ]
    with _x86_intrinsics_only(), tempfile.TemporaryDirectory() as work:
        (context,), _ = _tune_contexts([task], work)
        sketches = context.space_generator.generate_design_space(context.mod)
    sketch = next(s for s in sketches if "dot_16x4_vnni" in str(s.trace))
    results = []
    for inline in (False, True):
        sch = Schedule(context.mod, seed=1)
        sketch.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=None)
        if inline:
            sch.compute_inline(sch.get_sblock("PadInput"))  # topi.nn.pad's block
            assert "if_then_else" in sch.mod.script()
        results.append(serial_tensorized().apply(sch))
    assert results == [True, False]
