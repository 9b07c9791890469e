"""Structured channel pruning: remove whole channels, leaving a smaller dense model.

The channel dependency graph (:mod:`lightir.analysis.channels`) decides which channels can
only go together (residual Adds, Concat offsets, depthwise convs, whole groups of a grouped
conv, SE gates, Flatten -> Gemm blocks). Within each prunable group, the least important
channels are removed from every layer they touch: the producing weight rows, BN parameters
and biases, per-channel constants, and the consuming weight columns.

Importance (``criterion``; ``auto``, the default, is ``output-error`` with calibration data
and ``l1`` without):

* ``output-error``: the output error the removal leaves in the consuming layers, measured on
  the calibration data and chosen greedily, one channel at a time
  (:class:`lightir.analysis.reconstruct.RemovalCost`). With ``refit=true`` it is the
  error left after the refit (optimal brain surgeon: a channel whose contribution the others
  can take over costs little, however large its weights); without, the error left after the bias
  compensation (ThiNet). On PP-OCRv6 small rec at ``ratio=0.2,refit=true`` it took the
  top-1 agreement per position from 0.897 (``l1``, rolled back) to 0.981.

Otherwise summed over the group's producing layers:

* ``l1`` / ``l2``: mean absolute value / root mean square of the producing weight rows;
* ``bn-gamma``: ``|gamma|`` of the BatchNormalization on the channel (network slimming);
* ``activation``: mean ``|a|`` of the channel on the calibration data;
* ``entropy``: entropy of the channel's spatially averaged activation over the calibration
  samples (Luo et al.); a channel that hardly varies carries little information.

Budget:

* ``ratio=R`` removes a fraction R of each group's channels (``scope=uniform``), or the
  globally least important fraction R of all prunable channels (``scope=global``).
* ``target-macs=R`` removes channels in steps of ``round`` until the model's MACs are at
  most R of the original, each step taking the channels with the least importance lost per
  MAC saved. Importance is normalized per group. With calibration data, each group's curve
  is its measured output error when pruned alone.

Kept channel counts are rounded to the nearest multiple of ``round`` (a grouped conv's group
of 8 channels is one step), and groups produced by the first layer or consumed by the last
one are protected unless ``protect-first`` / ``protect-last`` are false.

``round=0`` (the default) rounds to the channel block onnxruntime's convolutions pad to on
the machine the pass runs on, measured (:func:`lightir.search.latency.conv_channel_block`):
16 where MLAS runs its NCHWc kernels with AVX-512, 8 with AVX2. A count between two blocks
is padded up, so channels removed below a block boundary cost accuracy and save no time.
Measured on the AVX-512 VNNI machine at ``ratio=0.2,refit=true`` with 32 held-out
verification rows (``tools/README.md``): MTCNN R-Net runs at 1.00 of the original with
``round=8`` (MACs 0.875) and at 0.88 with 16 (MACs 0.75, face decisions agreeing on 0.94 of
the evaluation crops); O-Net 1.01 / 0.82; PP-OCRv6 small det 0.83 / 0.68 (mask IoU 0.960 /
0.952). Rounding to the nearest block takes more than ``ratio`` from some narrow layers
(48 -> 32 channels at 0.2) and less from others. Give ``round=8`` (or 1) when the model will
run elsewhere, on a runtime without channel blocks.

Repair after removal:

* unless ``compensate=false``, the removed channels' mean contribution is folded into the
  consumer's bias.
* ``refit=true`` (needs ``--calib``): then each consuming Conv / Gemm is refit, in
  topological order, by ridge least squares on real activations, pulled toward its
  compensated weights. The refit maps the pruned model's inputs to the original model's
  outputs (He et al. 2017; ThiNet); a layer whose refit does not generalize to held-out rows
  keeps its compensated weights (:mod:`lightir.analysis.reconstruct`).
  The mean comes from calibration data when given, otherwise from the BN statistics feeding
  the channel (``E[relu(gamma z + beta)]`` for ``z ~ N(0, 1)``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lightir.analysis.channels import ChannelGraph
from lightir.errors import UsageError
from lightir.pass_base import Contract, Pass, PassContext, PassResult, Strength
from lightir.prune.importance import DATA_CRITERIA
from lightir.prune.plan import PrunePlanner, where
from lightir.prune.surgery import prune_components
from lightir.registry import register_pass
from lightir.search.latency import conv_channel_block


@dataclass(frozen=True)
class Options:
    """Options of prune (pipeline keys use dashes: ``target-macs``)."""

    ratio: float = 0.3
    criterion: Literal["auto", "l1", "l2", "bn-gamma", "activation", "entropy", "output-error"] = (
        "auto"
    )
    scope: Literal["uniform", "global"] = "uniform"
    target_macs: float = 0.0
    round: int = 0  # 0: the measured channel block of this machine's convolutions
    protect_first: bool = True
    protect_last: bool = True
    refit: bool = False
    compensate: bool = True
    # The low-rank passes' name for the same least-squares refit; the old key still parses.
    RENAMED: ClassVar[dict[str, str]] = {"reconstruct": "refit"}

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 <= self.target_macs <= 1.0:
            raise ValueError(f"target-macs must be in (0, 1], got {self.target_macs}")
        if self.round < 0:
            raise ValueError(f"round must be >= 1 (or 0: measured), got {self.round}")


@register_pass("prune", contract=Contract.lossy(min_cosine=0.9))
class Prune(Pass):
    """Remove whole channels across residuals, concats and depthwise convs (smaller dense model)."""

    Options = Options
    # Without ratio= or target-macs=, the strongest ratio that meets the budget.
    strength = Strength("ratio", (0.6, 0.5, 0.4, 0.3, 0.2, 0.1), ("target_macs",))

    def requires(self, model: ir.Model, context: PassContext) -> None:
        """``refit`` and the data-driven criteria need ``--calib``."""
        if context.calibration is not None:
            return
        if self.options.refit:
            raise UsageError("prune{refit=true} needs calibration data: pass --calib FILE.npz")
        if self.options.criterion in DATA_CRITERIA:
            raise UsageError(
                f"prune{{criterion={self.options.criterion}}} needs calibration data: "
                "pass --calib FILE.npz"
            )

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Analyse, plan, remove, then refit or compensate the consumers."""
        options = self.options
        if not options.round:
            options = replace(options, round=conv_channel_block())
        common_passes.ShapeInferencePass()(model)
        groups, frozen = ChannelGraph(model).groups()
        for group, reason in frozen:
            context.decline(where(group), reason)
        batches = None
        if context.calibration is not None:
            batches = list(context.calibration.batches(batch_size=16, limit=64))
        components = PrunePlanner(model, groups, options, context, batches).plan()
        stats = prune_components(
            model, components, compensate=options.compensate, batches=batches, refit=options.refit
        )
        stats["groups"] = len(groups)
        stats["round"] = options.round
        return PassResult(model, modified=stats["channels_removed"] > 0, stats=stats)
