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
