"""Raise the model's ai.onnx opset with onnxscript's version converter (onnx's as fallback).

The pass manager runs it before a pass whose ``min_opset`` the model lacks (``int8`` writes
per-channel DequantizeLinear, whose ``axis`` exists from opset 13), so the report names the
upgrade as its own verified row; it can also be asked for: ``-p 'upgrade-opset{version=17}'``
(default 21).
A model at or above the version is left unchanged. When neither converter can convert the
model, the pass declines with the converter's message and the model is unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_ir as ir
from onnxscript.version_converter import convert_version

from lightir.errors import PassDeclined
from lightir.ir_util import opset_of
from lightir.pass_base import Pass, PassContext, PassResult
from lightir.registry import register_pass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Options of upgrade-opset."""

    version: int = 21  # run by the manager with the version a pass needs

    def __post_init__(self) -> None:
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if not 7 <= self.version <= newest:
            raise ValueError(f"version must be in 7..{newest}, got {self.version}")


@register_pass("upgrade-opset", contract="exact")
class UpgradeOpset(Pass):
    """Convert the model to a newer ai.onnx opset (onnxscript / onnx version converter)."""

    Options = Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Convert in place; decline when the converter cannot."""
        before = opset_of(model)
        if before >= self.options.version:
            return PassResult(model, modified=False)
        quiet = logging.getLogger("onnxscript.version_converter")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # it warns each time it falls back to onnx's converter
        try:
            convert_version(model, self.options.version, fallback=True)
        except Exception as exc:  # the converters raise many types; the message is the reason
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise PassDeclined(
                f"onnx's version converter cannot raise opset {before} to "
                f"{self.options.version} ({detail})"
            ) from exc
        finally:
            quiet.setLevel(level)
        after = opset_of(model)
        if after < self.options.version:
            raise PassDeclined(f"the version converter left opset {after} < {self.options.version}")
        return PassResult(model, modified=True, stats={"opset": f"{before} -> {after}"})
