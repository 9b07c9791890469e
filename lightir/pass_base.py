"""The pass base class, its contract and result.

A pass rewrites an :class:`onnx_ir.Model` in place and says what it promises about the model's
outputs (its :class:`Contract`). The pass manager (:mod:`lightir.manager`) checks that promise
with onnxruntime after the pass and rolls the pass back when it is broken.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_ir as ir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contract:
    """What a pass promises about the model's outputs.

    ``exact``: outputs equal up to float32 rounding; the tolerance is derived from the model
    (see :func:`lightir.verify.exact_tolerance`). ``lossy``: outputs within a stated budget:
    ``rel_error`` bounds ``max|after - before| / max|before|`` per output, ``min_cosine`` the
    cosine similarity, ``min_top1`` the top-1 agreement of logits-like outputs.
    """

    kind: str = "exact"
    rel_error: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "lossy"):
            raise ValueError(f"contract kind must be 'exact' or 'lossy', not {self.kind!r}")
        if self.kind == "lossy" and self.rel_error is None and self.min_cosine is None:
            raise ValueError("a lossy contract states a budget: rel_error or min_cosine")

    @classmethod
    def exact(cls) -> Contract:
        """Outputs equal up to float rounding."""
        return cls("exact")

    @classmethod
    def lossy(
        cls,
        rel_error: float | None = None,
        min_cosine: float | None = None,
        min_top1: float | None = None,
    ) -> Contract:
        """Outputs within the given budget."""
        return cls("lossy", rel_error, min_cosine, min_top1)

    @property
    def is_exact(self) -> bool:
        """Whether the pass promises float-rounding equality."""
        return self.kind == "exact"

    def describe(self) -> str:
        """Short human form, e.g. ``lossy(rel<=0.05, cos>=0.999)``."""
        if self.is_exact:
            return "exact"
        return f"lossy({describe_bounds(self.rel_error, self.min_cosine, self.min_top1)})"


def describe_bounds(
    rel_error: float | None, min_cosine: float | None, min_top1: float | None
) -> str:
    """``rel<=R, cos>=C, top1>=T`` for the bounds that are set."""
    parts = []
    if rel_error is not None:
        parts.append(f"rel<={rel_error:.2g}")
    if min_cosine is not None:
        parts.append(f"cos>={min_cosine:g}")
    if min_top1 is not None:
        parts.append(f"top1>={min_top1:g}")
    return ", ".join(parts)


EXACT = Contract.exact()


@dataclass(frozen=True)
class Strength:
    """The option that sets how hard a lossy pass compresses, and the values to try.

    ``values`` run from the strongest to the weakest. When the pipeline gives neither
    ``option`` nor any of ``alternatives`` (other ways to set the strength), the pass manager
    runs the pass at the strongest value that meets its budget on samples verification does
    not use, instead of at the default (which may be rolled back).
    """

    option: str
    values: tuple
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


@dataclass
class PassResult:
    """What a pass did: the model (changed in place) and whether it changed.

    ``stats`` holds counts for the report (``{"folded": 3}``).
    """

    model: ir.Model
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    # Safer answers, in order, for a lossy pass whose model misses its metric budget on the
    # manager's held-out samples (compress: the fastest candidates with more room under the
    # budget on its own selection samples). The manager tries each before rolling back.
    fallbacks: list[Fallback] = field(default_factory=list)


@dataclass
class Fallback:
    """A safer model a lossy pass offers in case its answer fails the held-out check.

    ``build`` makes the model when it is needed (a search holds one model at a time);
    ``stats`` replace the pass's own entries in the report when this model is kept.
    """

    label: str
    build: Callable[[], ir.Model]
    stats: dict[str, Any] = field(default_factory=dict)


class PassContext:
    """What the pass manager hands a pass besides the model.

    Attributes:
        calibration: calibration data (:class:`lightir.data.CalibrationData`) or ``None``.
        metric: the user's ``--metric`` (:class:`lightir.metrics.Metric`) or ``None``.
        declines: reasons a rewrite did not fire, shown by ``--explain``.

    """

    def __init__(self, calibration: Any = None, metric: Any = None) -> None:
        self.calibration = calibration
        self.metric = metric
        self.declines: list[str] = []

    def decline(self, where: str | ir.Node, reason: str) -> None:
        """Record why a rewrite did not fire at ``where`` (a node or a name)."""
        if isinstance(where, ir.Node):
            if where.name:
                where = f"{where.op_type} '{where.name}'"
            else:
                where = f"{where.op_type} producing '{where.outputs[0].name}'"
        self.declines.append(f"{where}: {reason}")
        logger.debug("declined at %s: %s", where, reason)


class Pass:
    """Base class of every lightir pass, built-in or user-written.

    Subclasses set ``name`` through :func:`lightir.register_pass`, may set ``Options`` to a
    frozen dataclass whose fields are the pipeline keys (``prune{ratio=0.3}``), may set
    ``min_opset`` when they emit ops or attributes older opsets lack and ``prerequisites``
    when they work on what other passes leave, may state preconditions in :meth:`requires`,
    and implement :meth:`run`, which changes the model in place through onnx-ir and returns a
    :class:`PassResult`. The first line of the class docstring is the pass's summary.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # What an ``unchanged`` row says the pass looked for and did not find (default: summary).
    looks_for: ClassVar[str] = ""
    contract: ClassVar[Contract] = EXACT
    Options: ClassVar[type] = NoOptions
    # The ai.onnx opset the ops and attributes this pass emits need. The pass manager raises
    # an older model to it first, as a verified ``upgrade-opset`` step named in the report.
    min_opset: ClassVar[int | None] = None
    # Passes that must have run before this one (``int8`` quantizes folded convolutions, so
    # ``fold-bn``). The pass manager runs each first, as its own verified step in the report,
    # unless it already ran earlier in the pipeline.
    prerequisites: ClassVar[tuple[str, ...]] = ()
    # A lossy pass's strength option, searched when the pipeline does not give it.
    strength: ClassVar[Strength | None] = None
    # A pass that scores models with the user's metric (``context.metric``): without
    # ``--metric``, the pass manager picks a default one and checks it on held-out samples.
    wants_metric: ClassVar[bool] = False

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        # The options the user gave (pipeline keys); options built in code count as given.
        fields = {f.name for f in option_fields(self.Options)}
        self.given: frozenset[str] = frozenset(fields if options is not None else ())

    @property
    def searches_strength(self) -> bool:
        """Whether the manager chooses this pass's strength (see :class:`Strength`)."""
        strength = self.strength
        if strength is None or self.contract.is_exact:
            return False
        return not ({strength.option, *strength.alternatives} & self.given)

    def requires(self, model: ir.Model, context: PassContext) -> None:
        """Check the pass's preconditions; the default has none.

        Raise :class:`~lightir.errors.UsageError` for what the command must change (no
        ``--calib`` where the pass needs data, options that contradict each other): the pass
        manager checks every pass this way on the input model before any work, and the CLI
        exits 2 with the message. Raise :class:`~lightir.errors.PassDeclined` for what this
        model lacks: checked again right before the pass runs, it records the pass as declined
        with the reason and the run goes on.
        """

    def metric_budget(self) -> float | None:
        """The most the user's metric may drop through this pass, or None (no such budget).

        With a budget, the pass manager scores the pass's result on its held-out samples and
        rolls the pass back when even the upper end of the score's 95% interval lies more
        than the budget below the original's score.
        """
        return None

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Rewrite ``model`` in place."""
        raise NotImplementedError(f"pass {self.name!r} does not implement run()")

    def __repr__(self) -> str:
        return f"<pass {self.name} {self.options}>"


def option_fields(options_cls: type) -> list[dataclasses.Field]:
    """The dataclass fields of an options class (empty for :class:`NoOptions`)."""
    return list(dataclasses.fields(options_cls)) if dataclasses.is_dataclass(options_cls) else []
