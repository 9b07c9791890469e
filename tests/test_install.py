"""Installing beside a GPU runtime: onnxruntime is an extra, and its absence is explained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_onnxruntime_build_is_a_plain_dependency():
    """onnxruntime-gpu / -openvino install the module onnxruntime too: a plain dependency on
    the CPU build would be installed over them."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("onnxruntime")]
    extras = project["optional-dependencies"]
    assert extras["cpu"][0].startswith("onnxruntime>=")
    assert extras["gpu"][0].startswith("onnxruntime-gpu>=")
    assert extras["openvino"][0].startswith("onnxruntime-openvino>=")


def test_without_onnxruntime_the_import_says_what_to_install(tmp_path):
    shadow = tmp_path / "onnxruntime"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named onnxruntime')")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-c", "import lightir"], capture_output=True, text=True, env=env
    )
    assert done.returncode != 0
    assert "pip install 'lightir[cpu]', or one of onnxruntime-gpu" in done.stderr.splitlines()[-1]
