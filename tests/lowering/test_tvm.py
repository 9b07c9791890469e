"""Lowering through TVM (issue 8): x86 compile-and-compare, ARM cross-compile, CUDA build.

TVM is the optional extra ``lightir[tvm]``; CI installs it (the README's test command).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import lightir
from lightir import zoo
from lightir.errors import InputError, UsageError
from lightir.testing import from_text, random_inputs, run

tvm = pytest.importorskip("tvm")

from lightir.lowering import compile_model, load, resolve  # noqa: E402


def elf_machine(path) -> int:
    with open(path, "rb") as handle:
        header = handle.read(20)
    assert header[:4] == b"\x7fELF"
    return struct.unpack("<H", header[18:20])[0]


@pytest.mark.parametrize("name", ["digits", "repvgg"])
def test_x86_library_matches_onnxruntime(tmp_path, name):
    model = lightir.optimize(f"zoo:{name}", "reparam").model
    library = tmp_path / f"{name}.so"
    result = compile_model(model, library, "x86", pipeline="reparam")
    assert result.checked and result.rel_error <= result.tolerance
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert meta["pipeline"] == "reparam" and meta["target"]["kind"] == "llvm"
    assert meta["inputs"][0]["shape"][0] == 1 and meta["versions"]["tvm"]
    assert meta["check"]["run_on"] == "this machine"
    assert meta["check"]["rel_error"] == result.rel_error <= meta["check"]["tolerance"]
    # The runner is called like an onnxruntime session, on inputs the check did not use.
    compiled = load(library)
    feeds = random_inputs(model, samples=1, seed=42)
    shape = tuple(meta["inputs"][0]["shape"])
    feeds = [{k: v[:1].reshape(shape) for k, v in f.items()} for f in feeds]
    expected, actual = run(model, feeds)[0], compiled.run_dict(feeds[0])
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-4, atol=1e-5)
    # Code written against an onnxruntime session runs against the library unchanged.
    lightir.save(model, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(tmp_path / f"{name}.onnx", providers=["CPUExecutionProvider"])
    for runner in (session, compiled):
        (inp,), outputs = runner.get_inputs(), runner.get_outputs()
        assert inp.name == meta["inputs"][0]["name"] and inp.type == "tensor(float)"
        names = [o.name for o in outputs]
        assert names == list(expected) and all(o.type == "tensor(float)" for o in outputs)
        got = runner.run(names[::-1], {inp.name: feeds[0][inp.name]})
        assert isinstance(got, list)
        np.testing.assert_allclose(got[0], expected[names[-1]], rtol=1e-4, atol=1e-5)
    assert compiled.get_inputs()[0].shape == list(shape)
    with pytest.raises(lightir.UsageError, match=r"run\(None, feeds\)"):
        compiled.run(feeds[0])
    with pytest.raises(lightir.UsageError, match="no output 'nope'"):
        compiled.run(["nope"], feeds[0])
    with pytest.raises(lightir.UsageError, match=f"missing input '{inp.name}'"):
        compiled.run(None, {})


def test_wide_softmax_is_as_accurate_as_onnxruntime(tmp_path):
    """A confident Softmax over 6625 classes (PP-OCR's recognizers): TVM's CPU code summed the
    exponentials one by one in float32 and missed the float64 result by 3.3e-5, 15x further
    than onnxruntime; the float64 accumulator brings it within 1e-6."""
    model = from_text(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 8, 6625] z) => (float[1, 8, 6625] p) { p = Softmax<axis = 2>(z) }"""
    )
    result = compile_model(model, tmp_path / "softmax.so", "x86")
    assert result.checked and result.rel_error <= result.tolerance
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((1, 8, 6625)) * 3).astype(np.float32)
    z[..., 5] += 16
    truth = np.exp(z.astype(np.float64) - z.max(-1, keepdims=True))
    truth /= truth.sum(-1, keepdims=True)
    compiled = load(tmp_path / "softmax.so").run(["p"], {"z": z})[0]
    reference = run(model, [{"z": z}])[0]["p"]
    assert np.abs(compiled - truth).max() <= 1e-6
    assert np.abs(compiled - reference).max() <= 1e-5


@pytest.mark.parametrize(
    "fixture",
    ["repvgg_torch_train", "repvgg_torch_train_dynamo", "resnet_torch", "resnet_torch_dynamo"],
)
def test_pytorch_exports_compile_and_match(tmp_path, fixture):
    """RepVGG and ResNet (residual adds, projection shortcuts) exported by both PyTorch
    exporters, reparameterized, then lowered (tools/export_*_torch.py made them)."""
    path = Path(__file__).parents[1] / "fixtures" / f"{fixture}.onnx"
    model = lightir.optimize(path, "reparam").model
    result = compile_model(model, tmp_path / "m.so", "x86")
    assert result.checked and result.rel_error <= result.tolerance


def test_int8_qdq_model_imports_as_fake_quant_and_lowers_as_integer(tmp_path):
    """TVM imports QDQ as dequantize + float32 conv; lightir computes those in integers
    (tests/lowering/test_integer.py), and the library matches onnxruntime's int8 run."""
    from tvm.relax.frontend.onnx import from_onnx

    model = lightir.optimize("zoo:digits", "reparam,int8").model
    text = from_onnx(ir.to_proto(model), shape_dict={"input": [1, 1, 8, 8]}).script()
    convs = [line for line in text.splitlines() if "conv2d(" in line]
    assert convs and all('dtype="float32"' in line for line in convs)
    result = compile_model(model, tmp_path / "q.so", "x86")
    assert result.checked and result.rel_error <= result.tolerance
    assert result.metadata["integer_ops"] == len(convs) + 2  # the convs and both Gemms


def test_cli_compiles_and_reports(tmp_path):
    out = tmp_path / "resnet.so"
    proc = subprocess.run(
        [sys.executable, "-m", "lightir.cli", "zoo:resnet", "-p", "reparam",
         "--target", "x86", "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "compiled for x86" in proc.stderr and "matches onnxruntime" in proc.stderr
    assert out.exists() and out.with_suffix(".json").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "lightir.cli", "zoo:resnet", "-p", "reparam",
         "--target", "x86", "-o", str(tmp_path / "resnet.onnx")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 2 and "-o NAME.so" in bad.stderr


def arm_emulator():
    """The qemu-aarch64 emulator; CI must have it (its test command runs the setup)."""
    from lightir.lowering.emulation import find

    emulator, why = find()
    if emulator is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs ARM builds under emulation, but: {why}")
        pytest.skip(why)
    return emulator


@pytest.mark.parametrize("name", ["digits", "resnet"])
def test_arm_build_runs_under_qemu_and_matches_onnxruntime(tmp_path, name):
    arm_emulator()
    model = lightir.optimize(f"zoo:{name}", "reparam").model
    library = tmp_path / f"{name}_arm.so"
    result = compile_model(model, library, "arm-a76")
    assert elf_machine(library) == 183  # EM_AARCH64
    assert result.checked and result.checked_on == "qemu-aarch64"
    assert result.rel_error <= result.tolerance


def test_pytorch_resnet_arm_build_runs_under_qemu(tmp_path):
    arm_emulator()
    path = Path(__file__).parents[1] / "fixtures" / "resnet_torch.onnx"
    model = lightir.optimize(path, "reparam").model
    result = compile_model(model, tmp_path / "resnet_arm.so", "arm-n1")
    assert result.checked and result.checked_on == "qemu-aarch64"
    assert result.rel_error <= result.tolerance
    assert (
        json.loads(result.library.with_suffix(".json").read_text())["check"]["run_on"]
        == "qemu-aarch64"
    )


def test_emulated_check_rejects_a_library_that_computes_something_else(tmp_path):
    """The ARM check can fail: a library built from other weights is caught and not written."""
    from lightir.lowering import tvm_backend
    from lightir.lowering.targets import resolve as resolve_target

    emulator = arm_emulator()
    model = lightir.optimize("zoo:digits", "reparam").model
    library = tmp_path / "digits_arm.so"
    built = compile_model(model, library, "arm", check=False)
    other = lightir.optimize("zoo:digits", "reparam").model
    weight = next(v for v in other.graph.initializers.values() if v.const_value.numpy().ndim == 4)
    changed = weight.const_value.numpy().copy()
    changed[0] *= 1.01  # one output channel of the first conv, 1% off
    weight.const_value = ir.tensor(changed, name=weight.name)
    result = tvm_backend.LoweringResult(library, built.metadata, 0.0)
    run = tvm_backend._runner(library, built.metadata, resolve_target("arm"), result)
    assert result.checked_on == "qemu-aarch64"
    with pytest.raises(tvm_backend.LoweringError, match="disagrees with onnxruntime"):
        tvm_backend._check(other, run, built.metadata, result, 2, 0, None)
    assert emulator.run(library, [np.zeros((1, 1, 8, 8), np.float32)])[0].shape == (1, 10)


def test_emulator_returns_every_output_with_its_dtype(tmp_path):
    arm_emulator()
    model = from_text(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 6] x) => (float[1, 3, 6] y, int64[1, 6] idx) {
            y = Relu(x)
            idx = ArgMax<axis = 1, keepdims = 0>(y)
        }"""
    )
    result = compile_model(model, tmp_path / "two.so", "arm")
    assert result.checked and result.checked_on == "qemu-aarch64"
    from lightir.lowering.emulation import find

    x = np.random.default_rng(0).standard_normal((1, 3, 6)).astype(np.float32)
    y, idx = find()[0].run(tmp_path / "two.so", [x])
    assert idx.dtype == np.int64 and idx.shape == (1, 6)
    np.testing.assert_array_equal(idx, np.maximum(x, 0).argmax(axis=1))
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_arm_build_without_emulator_is_built_and_says_why_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTIR_CACHE", str(tmp_path / "empty-cache"))
    model = lightir.optimize("zoo:digits", "reparam").model
    library = tmp_path / "digits_arm.so"
    result = compile_model(model, library, "arm-a76")
    assert not result.checked and "not executed" in result.notes[0]
    assert "python -m lightir.lowering.emulation setup" in result.notes[0]
    assert elf_machine(library) == 183  # EM_AARCH64


def test_cuda_build_schedules_every_kernel_and_nvcc_accepts_it(tmp_path):
    model = lightir.optimize("zoo:digits", "reparam").model
    library = tmp_path / "digits_cuda.so"
    result = compile_model(model, library, "cuda-sm80")
    assert library.exists()
    assert json.loads(library.with_suffix(".json").read_text())["device"] == "cuda"
    assert any("cubin" in n or "nvcc is not on PATH" in n for n in result.notes), result.notes


def test_unsupported_ops_are_listed_at_once_and_nothing_is_written(tmp_path):
    model = from_text(
        """<ir_version: 8, opset_import: ["" : 17, "com.acme" : 1]>
        g (float[1, 4] x) => (float[1, 4] y) {
            a = com.acme.Foo(x)
            b = com.acme.Bar(a)
            y = Relu(b)
        }"""
    )
    with pytest.raises(InputError, match=r"2 op\(s\).*com.acme.Bar, com.acme.Foo"):
        compile_model(model, tmp_path / "m.so", "x86")
    assert not list(tmp_path.iterdir())


def test_targets_resolve_and_unknown_ones_are_refused():
    assert resolve("arm").config["mtriple"] == "aarch64-linux-gnu"
    assert resolve("cuda-sm90").kind == "cuda"
    assert resolve('{"kind": "llvm", "mcpu": "znver3"}').kind == "x86"
    with pytest.raises(UsageError, match="unknown target"):
        resolve("riscv")
    model = zoo.build("digits")
    with pytest.raises(UsageError, match="NAME.so"):
        compile_model(model, "/tmp/x.onnx", "x86")


ZOO = [name for name in zoo.BUILDERS if name != "resnet50"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["x86", "arm-a76", "cuda-sm90"])
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_compiles_for_every_target_kind(tmp_path, name, target):
    """Issue 8's matrix (about 4 minutes): x86 run here, arm run under qemu, cuda built."""
    if target.startswith("arm"):
        arm_emulator()
    model = lightir.optimize(f"zoo:{name}", "reparam").model
    result = compile_model(model, tmp_path / f"{name}.so", target)
    if target.startswith("cuda"):
        assert any("cubin" in n or "nvcc is not on PATH" in n for n in result.notes), result.notes
    else:
        assert result.checked and result.rel_error <= result.tolerance


@pytest.mark.slow
def test_tuning_database_is_reused_without_new_tuning(tmp_path):
    """Minutes of MetaSchedule: benchmark-only in CI terms, run by hand (-m slow)."""
    pytest.importorskip("xgboost")
    model = lightir.optimize("zoo:digits", "reparam").model
    db = tmp_path / "db"
    lines = []
    first = compile_model(
        model, tmp_path / "a.so", "x86", tune_trials=16, tuning_db=db, progress=lines.append
    )
    tuning = first.metadata["tuning"]
    assert lines and all(
        re.match(r"tuning \d+/16 trials: task \d+/\d+ \w+, best ", x) for x in lines
    )
    assert first.checked and tuning["tuned_now"] == tuning["tasks"] > 0
    # Every kernel gets its tuned schedule (a re-fused module once matched no record at all).
    assert tuning["applied"] == tuning["tasks"]
    second = compile_model(model, tmp_path / "b.so", "x86", tune_trials=16, tuning_db=db)
    again = second.metadata["tuning"]
    assert second.checked and again["tuned_now"] == 0 and again["already_tuned"] == tuning["tasks"]
    assert again["applied"] == tuning["tasks"]
    untuned = compile_model(model, tmp_path / "c.so", "x86", tuning_db=tmp_path / "empty")
    assert untuned.metadata["tuning"]["applied"] == 0


@pytest.mark.slow
def test_ctrl_c_stops_tuning_keeps_the_records_and_writes_nothing(tmp_path):
    """SIGINT during --tune: exit 130 after the batch in flight, records kept, no library."""
    pytest.importorskip("xgboost")
    import signal

    db, out = tmp_path / "db", tmp_path / "m.so"
    command = [
        sys.executable, "-m", "lightir.cli", "zoo:digits", "-p", "reparam",
        "--target", "x86", "-o", str(out), "--tune", "64", "--tuning-db", str(db),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # wait for the first measured batch
        lines.append(line)
        if line.startswith("tuning "):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, "".join(lines) + rest
    assert "tuning interrupted" in rest and "nothing was written" in rest
    assert not out.exists() and not out.with_suffix(".json").exists()
    records = (db / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= 8
    model = lightir.optimize("zoo:digits", "reparam").model
    resumed = compile_model(model, out, "x86", tuning_db=db)  # no new trials: the records apply
    assert resumed.checked and 1 <= resumed.metadata["tuning"]["applied"] < 8


def test_a_library_rebuilt_at_the_same_path_is_loaded_anew(tmp_path):
    """The dynamic loader hands back the library already open under a path: a model
    rebuilt there while the first is still loaded must run (and be checked) as the new
    one. The two builds here compute different functions (x + 1 and x * 3)."""
    library = tmp_path / "m.so"
    first = from_text("<ir_version: 8, opset_import: [\"\" : 17]> g (float[1, 4] x) => "
                      "(float[1, 4] y) { one = Constant <value = float {1.0}> ()\n"
                      "y = Add(x, one) }")  # fmt: skip
    second = from_text("<ir_version: 8, opset_import: [\"\" : 17]> g (float[1, 4] x) => "
                       "(float[1, 4] y) { three = Constant <value = float {3.0}> ()\n"
                       "y = Mul(x, three) }")  # fmt: skip
    feed = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
    assert compile_model(first, library, "x86").checked
    held = load(library)
    np.testing.assert_array_equal(held.run_dict(feed)["y"], feed["x"] + 1)
    result = compile_model(second, library, "x86")
    assert result.checked and result.rel_error <= result.tolerance
    np.testing.assert_array_equal(load(library).run_dict(feed)["y"], feed["x"] * 3)
    np.testing.assert_array_equal(held.run_dict(feed)["y"], feed["x"] + 1)
