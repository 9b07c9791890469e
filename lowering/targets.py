"""Deployment targets: names a user types, resolved to TVM target JSON dicts.

* ``x86``: this machine's CPU, features detected by LLVM (``llvm_get_system_cpu``);
  ``x86-avx2`` / ``x86-avx512`` name a CPU family instead, for building elsewhere.
* ``arm`` (generic aarch64 + NEON), ``arm-a72``, ``arm-a76`` (+dotprod), ``arm-n1``
  (Neoverse N1, +dotprod): cross-compiled with ``aarch64-linux-gnu-g++``.
* ``cuda`` (sm_80), ``cuda-sm75`` ... ``cuda-sm90``: TVM's NVIDIA target tags, which carry the
  device limits dlight schedules need.

A JSON dict (``'{"kind": "llvm", "mcpu": "znver3"}'``) is accepted as well.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from lightir.errors import UsageError

_AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}

PRESETS: dict[str, dict | str] = {
    "x86-avx2": {"kind": "llvm", "mcpu": "haswell"},
    "x86-avx512": {"kind": "llvm", "mcpu": "skylake-avx512"},
    "arm": {**_AARCH64, "mattr": ["+neon"]},
    "arm-a72": {**_AARCH64, "mcpu": "cortex-a72", "mattr": ["+neon"]},
    "arm-a76": {**_AARCH64, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]},
    "arm-n1": {**_AARCH64, "mcpu": "neoverse-n1", "mattr": ["+neon", "+dotprod"]},
    "cuda": "nvidia/nvidia-a100",
    "cuda-sm75": "nvidia/nvidia-t4",
    "cuda-sm80": "nvidia/nvidia-a100",
    "cuda-sm86": "nvidia/geforce-rtx-3090",
    "cuda-sm90": "nvidia/nvidia-h100",
}


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: what to build for and how to run it."""

    name: str
    config: dict | str  # TVM target JSON dict, or a TVM target tag
    kind: str  # "x86", "arm" or "cuda"

    @property
    def runs_here(self) -> bool:
        """Whether a build for this target can execute on this machine."""
        return self.kind == "x86"

    def tvm_target(self):
        """The ``tvm.target.Target``."""
        import tvm

        return tvm.target.Target(self.config)


def resolve(name: str) -> TargetSpec:
    """``x86``, a preset name, or a JSON dict -> :class:`TargetSpec`."""
    text = name.strip()
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--target {name!r}: not valid JSON ({exc})") from exc
        return TargetSpec("custom", config, _kind_of(config))
    if text == "x86":
        import tvm

        cpu = tvm.target.codegen.llvm_get_system_cpu()
        config = {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1}
        return TargetSpec("x86", config, "x86")
    if text not in PRESETS:
        names = ", ".join(["x86", *PRESETS])
        raise UsageError(f"unknown target {name!r}; use one of {names}, or a TVM JSON dict")
    config = PRESETS[text]
    kind = "cuda" if isinstance(config, str) else _kind_of(config)
    if kind == "x86" and isinstance(config, dict):
        config = {**config, "num-cores": os.cpu_count() or 1}
    return TargetSpec(text, config, kind)


def _kind_of(config: dict) -> str:
    if config.get("kind") == "cuda":
        return "cuda"
    if "aarch64" in str(config.get("mtriple", "")):
        return "arm"
    if config.get("kind") == "llvm":
        return "x86"
    raise UsageError(f"target {json.dumps(config)}: only llvm (x86, aarch64) and cuda are built")
