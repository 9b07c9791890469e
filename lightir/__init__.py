"""lightir: make trained convolutional networks small and fast without retraining.

Public API::

    import lightir
    result = lightir.optimize("model.onnx", "fold-bn,cleanup")
    lightir.save(result.model, "small.onnx")
    print(result.report.ok)
"""

from __future__ import annotations

from lightir.errors import (
    BudgetUnmet,
    InputError,
    LightirError,
    PassDeclined,
    PassFailedError,
    UsageError,
)
from lightir.io import load, save
from lightir.manager import Instrument, Result, optimize
from lightir.pass_base import EXACT, Contract, NoOptions, Pass, PassContext, PassResult
from lightir.pipeline import format_pipeline, parse_pipeline
from lightir.registry import load_pass_plugin, register_pass, register_pipeline
from lightir.report import PassRecord, Report

__version__ = "0.1.0"

__all__ = [
    "BudgetUnmet",
    "EXACT",
    "Contract",
    "InputError",
    "Instrument",
    "LightirError",
    "NoOptions",
    "Pass",
    "PassContext",
    "PassDeclined",
    "PassFailedError",
    "PassRecord",
    "PassResult",
    "Report",
    "Result",
    "UsageError",
    "format_pipeline",
    "load",
    "load_pass_plugin",
    "optimize",
    "parse_pipeline",
    "register_pass",
    "register_pipeline",
    "save",
]
