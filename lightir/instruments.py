"""Instruments: hooks around passes for ``--print-ir-after*`` and ``--dump-dir``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

import onnx_ir as ir

from lightir import io as lightir_io
from lightir.manager import Instrument
from lightir.pass_base import Pass
from lightir.report import PassRecord

logger = logging.getLogger(__name__)


class PrintIRAfter(Instrument):
    """Print the model's IR text after the named passes (all passes when ``names`` is None)."""

    def __init__(self, names: set[str] | None = None, stream: TextIO | None = None) -> None:
        self.names = names
        self.stream = stream or sys.stderr

    def after_pass(self, index: int, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        """Print when the pass is selected."""
        if self.names is not None and pass_.name not in self.names:
            return
        print(
            f"// ----- IR after pass #{index} {pass_.name} ({record.status}) -----",
            file=self.stream,
        )
        print(str(model.graph), file=self.stream)


class DumpDir(Instrument):
    """Save the model after every pass as ``DIR/NN-name.onnx``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def after_pass(self, index: int, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        """Save the accepted model of this step."""
        path = self.directory / f"{index:02d}-{pass_.name}.onnx"
        lightir_io.save(model, path)
        logger.info("dumped %s", path)
