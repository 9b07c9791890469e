from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import lightir
from lightir import registry


def test_class_and_function_passes_register_like_builtins(throwaway_passes):
    @lightir.register_pass("noop-class", contract="exact")
    class NoopClass(lightir.Pass):
        """Do nothing, as a class."""

        def run(self, model, context):
            return lightir.PassResult(model, modified=False)

    @lightir.register_pass("noop-function", contract="exact", summary="Do nothing, as a function.")
    def noop_function(model, context):
        return False

    passes = registry.all_passes()
    assert passes["noop-class"].summary == "Do nothing, as a class."
    assert passes["noop-function"].summary == "Do nothing, as a function."
    result = lightir.optimize("zoo:vgg", "noop-class,noop-function")
    assert [r.status for r in result.report.records] == ["unchanged", "unchanged"]


def test_duplicate_and_bad_names_are_refused(throwaway_passes):
    with pytest.raises(ValueError, match="already registered"):
        lightir.register_pass("fold-bn")(lambda model, context: False)
    with pytest.raises(ValueError, match="lower case"):
        lightir.register_pass("Fold_BN")(lambda model, context: False)
    with pytest.raises(ValueError, match="states a budget"):
        lightir.Contract.lossy()


def test_entry_point_plugins_are_discovered(tmp_path):
    """A package's entry point in group lightir.passes makes its passes available."""
    (tmp_path / "demo_lightir_plugin.py").write_text(
        textwrap.dedent(
            '''
            import lightir

            @lightir.register_pass("demo-plugin-pass", contract="exact")
            def demo(model, context):
                """A pass shipped by an installed package."""
                return False
            '''
        )
    )
    dist = tmp_path / "demo_lightir_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: demo-lightir-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text("[lightir.passes]\ndemo = demo_lightir_plugin\n")
    script = "from lightir.cli import main; main(['--list-passes'])"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "demo-plugin-pass" in proc.stdout
        and "A pass shipped by an installed package." in proc.stdout
    )


def test_plugin_import_failure_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise ImportError('missing dependency xyz')\n")
    with pytest.raises(lightir.UsageError, match="missing dependency xyz"):
        registry.load_pass_plugin(str(bad))
    with pytest.raises(lightir.UsageError, match="no such file"):
        registry.load_pass_plugin(str(tmp_path / "absent.py"))
