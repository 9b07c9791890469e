"""The exceptions lightir raises, each mapped to an exit code of ``lightir-opt``.

Every message is one line that says what failed, where, and what to do next.
"""

from __future__ import annotations


class LightirError(Exception):
    """Base class of every error lightir raises on purpose."""

    exit_code = 1


class InputError(LightirError):
    """The model file or the user's input cannot be used (exit code 2)."""

    exit_code = 2


class UsageError(LightirError):
    """A pipeline, pass name, option or flag is wrong (exit code 2)."""

    exit_code = 2


class PassFailedError(LightirError):
    """A pass raised or broke its contract and the run was asked to stop (exit code 1)."""

    exit_code = 1


class PassDeclined(LightirError):
    """A pass cannot apply to this model; raised from ``run``, the model is left as it was.

    The pass manager records the pass as ``declined`` with this message (not a failure: the
    run goes on and exits 0), e.g. a model already quantized, or an opset upgrade that onnx's
    version converter cannot do. ``stats`` go into the record as a changed pass's would (what a
    search tried before it found nothing to keep).
    """

    exit_code = 1

    def __init__(self, message: str, stats: dict | None = None) -> None:
        super().__init__(message)
        self.stats = dict(stats or {})


class BudgetUnmet(PassDeclined):
    """No setting a budgeted pass tried meets the user's budget (``compress{max-drop=...}``).

    The budget is the input at fault: the pass is recorded as declined (the model left as it
    was, ``PassRecord.failure == "budget"``), and ``lightir-opt`` says what the pass found
    closest and exits 2 without writing the model.
    """

    exit_code = 2
