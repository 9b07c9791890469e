"""The README's promises: its commands and its custom-pass example."""

from __future__ import annotations

import re
from pathlib import Path

from lightir import registry

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def quick_start_commands():
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    pip install")]


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "lightir-opt zoo:" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_custom_pass_example_runs(throwaway_passes):
    section = README.split("## Writing a pass", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 16
    namespace: dict = {}
    exec(compile(code, "README-example", "exec"), namespace)
    assert "strip-doc" in registry.all_passes()
    assert namespace["result"].report.records[1].name == "strip-doc"


def test_preconditions_example_behaves_as_described(throwaway_passes):
    import numpy as np
    import pytest

    import lightir
    from lightir.data import CalibrationData
    from lightir.testing import from_text

    section = README.split("## Writing a pass", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]
    namespace: dict = {"lightir": lightir}
    exec(compile(code, "README-example-2", "exec"), namespace)
    my_quant = lightir.register_pass("my-quant", contract="exact")(namespace["MyQuant"])
    with pytest.raises(lightir.UsageError, match="needs calibration data"):
        lightir.optimize("zoo:vgg", "my-quant")
    relu = from_text("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }""")
    calib = CalibrationData({"x": np.ones((8, 4), np.float32)})
    report = lightir.optimize(relu, "my-quant", calib=calib).report
    # Declined as the model is: its prerequisite and opset upgrade do not run.
    assert [r.name for r in report.records] == ["my-quant"]
    assert report.ok and "no Conv to quantize" in report.record("my-quant").message
    assert my_quant.prerequisites == ("fold-bn",) and my_quant.min_opset == 13
