"""lightir-opt run as a user runs it: a subprocess, exit codes, files, stderr."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

import lightir
from lightir import zoo
from lightir.testing import from_text, op_types, random_inputs, run


def lightir_opt(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "lightir.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_main_job_folds_every_bn_and_matches(tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    proc = lightir_opt("zoo:resnet", "-p", "fold-bn,cleanup", "-o", out, "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert "fold-bn" in proc.stderr and "drift vs input" in proc.stderr  # the table
    optimized = lightir.load(out)
    assert "BatchNormalization" not in op_types(optimized)
    original = zoo.build("resnet")
    feeds = random_inputs(original, samples=4, seed=7)
    for ref, got in zip(run(original, feeds), run(optimized, feeds)):
        scale = np.abs(ref["logits"]).max()
        assert np.abs(ref["logits"] - got["logits"]).max() <= 1e-5 * scale
    data = json.loads(report.read_text())
    assert data["ok"] and data["passes"][0]["pass"] == "fold-bn"
    assert data["original"]["nodes"] > data["final"]["nodes"]


def test_the_output_model_records_what_was_done_to_it(tmp_path):
    source, out, again = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "again.onnx"
    lightir.save(zoo.build("resnet"), source)
    before = source.read_bytes()
    report = tmp_path / "report.json"
    done = lightir_opt(source, "-p", "fold-bn,prune{ratio=0.3}", "-o", out, "--report", report)
    assert done.returncode == 0, done.stderr
    assert source.read_bytes() == before  # the input is never modified
    props = {p.key: p.value for p in onnx.load(out).metadata_props}  # what Netron shows
    assert props["lightir.version"] == lightir.__version__
    assert props["lightir.pipeline"] == "fold-bn,prune{ratio=0.3}"
    provenance = json.loads(props["lightir.provenance"])
    fold, prune = provenance["passes"]
    assert fold == {**fold, "pass": "fold-bn", "contract": "exact", "status": "changed"}
    assert prune["contract"].startswith("lossy") and prune["status"] == "changed"
    assert float(prune["cosine"]) >= 0.9 and float(fold["rel_error"]) < 1e-4
    assert provenance["macs"][1] < provenance["macs"][0] and "drift" in provenance
    assert json.loads(report.read_text())["provenance"] == provenance  # the same record
    # Optimized again, the earlier record is kept.
    assert lightir_opt(out, "-p", "cleanup", "-o", again).returncode == 0
    props = {p.key: p.value for p in onnx.load(again).metadata_props}
    assert json.loads(props["lightir.provenance"])["previous"] == provenance


PLUGIN = textwrap.dedent(
    """
    import onnx_ir as ir
    import lightir

    @lightir.register_pass("perturb", contract="exact")
    def perturb(model, context):
        '''Deliberately wrong: nudges one weight of the first Conv.'''
        conv = next(n for n in model.graph if n.op_type == "Conv")
        value = conv.inputs[1]
        array = value.const_value.numpy().copy()
        array.flat[0] += 0.5
        value.const_value = ir.tensor(array, name=value.name)
        return True
    """
)


def test_wrong_pass_is_rolled_back_exit_1_and_last_good_model_written(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "out.onnx"
    proc = lightir_opt(
        "zoo:vgg", "-p", "fold-bn,perturb,cleanup", "--load-pass-plugin", plugin, "-o", out, "-q"
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass 'perturb' (#2)" in lines[0] and "rolled back" in lines[0]
    expected = lightir.optimize("zoo:vgg", "fold-bn").model
    # Same graph and bit-identical weights as the last good model (after fold-bn).
    got = lightir.load(out)
    assert op_types(got) == op_types(expected)
    for name, value in expected.graph.initializers.items():
        np.testing.assert_array_equal(
            got.graph.initializers[name].const_value.numpy(), value.const_value.numpy()
        )


def make_bad_inputs(tmp_path):
    good = tmp_path / "good.onnx"
    lightir.save(zoo.build("vgg"), good)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    random_bytes = tmp_path / "random.onnx"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(5000))
    escaping_dir = tmp_path / "escaping"
    escaping_dir.mkdir()
    escaping = escaping_dir / "model.onnx"
    lightir.save(zoo.build("vgg"), escaping, external_data=True)
    proto = onnx.load(str(escaping), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../../secret.data"
    onnx.save(proto, str(escaping))
    return {
        "missing": ([tmp_path / "nope.onnx", "-p", "fold-bn"], "no such file"),
        "random": ([random_bytes, "-p", "fold-bn"], "not a readable ONNX model"),
        "truncated": ([truncated, "-p", "fold-bn"], "ONNX"),
        "escaping": ([escaping, "-p", "fold-bn"], "outside the model's directory"),
        "unknown-pass": ([good, "-p", "fold-bm"], "did you mean 'fold-bn'"),
        "bad-option": ([good, "-p", "cleanup{level=3}"], "has no option 'level'"),
        "bad-zoo": (["zoo:resnt", "-p", "fold-bn"], "did you mean 'resnet'"),
        "no-pipeline": ([good], "no pipeline"),
        "bad-flag": ([good, "-p", "fold-bn", "--verify", "sometimes"], "invalid choice"),
        "same-output": ([good, "-p", "fold-bn", "-o", good], "is the input model"),
        "refit-no-calib": ([good, "-p", "fold-bn,prune{refit=true}"], "needs calibration data"),
        "tol-no-calib": ([good, "-p", "svd{tol=0.1}"], "svd{tol} needs calibration data"),
        "refit-act-alone": ([good, "-p", "svd{refit-act=true}"], "give refit=true too"),
        "metric-no-calib": ([good, "-p", "fold-bn", "--metric", "top1"], "needs --calib"),
        "metric-bad-module": ([good, "-p", "fold-bn", "--metric", "nope_mod:f"], "import failed"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "random",
        "truncated",
        "escaping",
        "unknown-pass",
        "bad-option",
        "bad-zoo",
        "no-pipeline",
        "bad-flag",
        "same-output",
        "refit-no-calib",
        "tol-no-calib",
        "refit-act-alone",
        "metric-no-calib",
        "metric-bad-module",
    ],
)
def test_bad_input_one_line_exit_2_no_output(tmp_path, case):
    cases = make_bad_inputs(tmp_path)
    args, expected = cases[case]
    out = tmp_path / "out.onnx"
    if "-o" not in args:
        args = [*args, "-o", out]
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*.onnx")}
    proc = lightir_opt(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lightir-opt: error:") and expected in lines[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".*.tmp"))
    for path, before in digest.items():  # the inputs are untouched
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_list_passes():
    proc = lightir_opt("--list-passes")
    assert proc.returncode == 0
    assert "fold-bn" in proc.stdout and "cleanup" in proc.stdout and "exact" in proc.stdout


def test_instruments_dump_dir_print_ir_and_explain(tmp_path):
    dump = tmp_path / "dump"
    proc = lightir_opt(
        "zoo:resnet",
        "-p",
        "fold-bn,cleanup",
        "--dump-dir",
        dump,
        "--print-ir-after",
        "fold-bn",
        "--explain",
        "--timing",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in dump.iterdir()) == ["01-fold-bn.onnx", "02-cleanup.onnx"]
    assert "IR after pass #1 fold-bn" in proc.stderr and "IR after pass #2" not in proc.stderr
    assert "pass #1 fold-bn: no declined matches" in proc.stderr
    assert "verification" in proc.stderr


def test_a_declined_pass_is_named_exits_0_and_the_model_is_written(tmp_path):
    once, twice = tmp_path / "int8.onnx", tmp_path / "again.onnx"
    assert lightir_opt("zoo:digits", "-p", "int8", "-o", str(once), "-q").returncode == 0
    done = lightir_opt(str(once), "-p", "int8", "-o", str(twice), "-q")
    assert done.returncode == 0, done.stderr
    assert "declined: the model is already quantized" in done.stderr
    assert twice.is_file()


def test_what_a_newcomer_tripped_over_is_said(tmp_path):
    """Issue 16, item 8: each of these was silent or wrong."""
    report = tmp_path / "r.json"
    done = lightir_opt("zoo:resnet", "-p", "fold-bn", "--verify", "structural", "--report", report)
    assert done.returncode == 0, done.stderr
    assert "no -o given: nothing written" in done.stderr
    assert "verify structural (no numeric check)" in done.stderr
    assert report.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not 0600
    # A rollback names the passes that then did not run, and how to run them.
    done = lightir_opt("zoo:resnet", "-p", "prune{ratio=0.9,round=1},cleanup,fold-bn")
    assert done.returncode == 1
    assert "stopped after #1 prune was rolled back: cleanup, fold-bn did not run" in done.stderr
    assert "--keep-going" in done.stderr
    # An unknown --dim is an error; dims that were assumed are said.
    done = lightir_opt("zoo:resnet", "-p", "fold-bn", "--dim", "height=3")
    assert done.returncode == 2 and "--dim height: the model has no dynamic dim" in done.stderr
    source = tmp_path / "dyn.onnx"
    lightir.save(
        from_text(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[N, 3, H, W] x) => (float[N, 3, H, W] y) { y = Relu(x) }"""
        ),
        source,
    )
    done = lightir_opt(source, "-p", "cleanup", "--dim", "W=16")
    assert "assumed H=64 (set with --dim NAME=N)" in done.stderr, done.stderr
    # A pass that ran and changed nothing says why.
    done = lightir_opt("zoo:resnet", "-p", "fold-bn,fold-bn,merge-branches", "--report", report)
    assert "#2 fold-bn unchanged: nothing in this model to change; it looks for: " in done.stderr
    assert "#3 merge-branches unchanged: every match was declined: " in done.stderr
    records = json.loads(report.read_text())["passes"]
    assert all(r["message"] for r in records if r["status"] == "unchanged")
    listed = lightir_opt("--list-models")
    assert listed.returncode == 0 and "zoo:digits" in listed.stdout
    passes = lightir_opt("--list-passes").stdout
    assert "energy=0.0" not in passes and "(searched when no strength is given)" in passes


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_tvm_that_does_not_import_is_a_one_line_error_before_any_pass(tmp_path):
    """An installed but broken TVM (a missing libtvm.so) was an internal error."""
    broken = tmp_path / "site" / "tvm"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libtvm.so: cannot open shared object')")
    output = tmp_path / "m.so"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run(
        [sys.executable, "-m", "lightir.cli", "zoo:resnet", "-p", "fold-bn", "--target", "x86"]
        + ["-o", str(output)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not import (ImportError: libtvm.so" in lines[0], lines
    assert not output.exists()
