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
  (:class:`lightir.analysis.reconstruct.RemovalCost`). With ``reconstruct=true`` it is the
  error left after the refit (optimal brain surgeon: a channel whose contribution the others
  can take over costs little, however large its weights); without, the error left after the bias
  compensation (ThiNet). On PP-OCRv6 small rec at ``ratio=0.2,reconstruct=true`` it took the
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

Kept channel counts are rounded to a multiple of ``round`` (8 by default, what vectorized
kernels like; a grouped conv's group of 8 channels is one step), and groups produced by the
first layer or consumed by the last one are protected unless ``protect-first`` /
``protect-last`` are false.

``round=16`` matches onnxruntime's NCHWc channel block on AVX-512 (8 with AVX2): a count
between two blocks is padded up, so channels removed below a block boundary save MACs on paper
and no time there. Measured on the AVX-512 VNNI machine at ``ratio=0.2,reconstruct=true``
(``tools/README.md``): MTCNN R-Net runs at 1.00 of the original with ``round=8`` (MACs
0.875) and at 0.88 with ``round=16`` (MACs 0.75). 16 is not the default because rounding to
nearest with a coarse step overshoots the ratio on narrow layers (48 -> 32 channels at 0.2):
R-Net's face decisions then agree on 0.81 of the crops, and O-Net and PP-OCRv6 small det,
kept at ``round=8``, are rolled back at 16.

Repair after removal:

* unless ``compensate=false``, the removed channels' mean contribution is folded into the
  consumer's bias.
* ``reconstruct=true`` (needs ``--calib``): then each consuming Conv / Gemm is refit, in
  topological order, by ridge least squares on real activations, pulled toward its
  compensated weights. The refit maps the pruned model's inputs to the original model's
  outputs (He et al. 2017; ThiNet); a layer whose refit does not generalize to held-out rows
  keeps its compensated weights (:mod:`lightir.analysis.reconstruct`).
  The mean comes from calibration data when given, otherwise from the BN statistics feeding
  the channel (``E[relu(gamma z + beta)]`` for ``z ~ N(0, 1)``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lightir.analysis.bn_stats import bn_output_means
from lightir.analysis.channels import ChannelGraph, ChannelGroup, Component
from lightir.analysis.reconstruct import (
    Moments,
    RemovalCost,
    layer_matrix,
    layer_rows,
    refit_layers,
    removal_order,
)
from lightir.data import input_specs
from lightir.errors import UsageError
from lightir.ir_util import clone_model
from lightir.onnx_bridge import capture
from lightir.pass_base import Contract, Pass, PassContext, PassResult
from lightir.registry import register_pass
from lightir.rewrite import unique_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Options of prune (pipeline keys use dashes: ``target-macs``)."""

    ratio: float = 0.3
    criterion: Literal["auto", "l1", "l2", "bn-gamma", "activation", "entropy", "output-error"] = (
        "auto"
    )
    scope: Literal["uniform", "global"] = "uniform"
    target_macs: float = 0.0
    round: int = 8
    protect_first: bool = True
    protect_last: bool = True
    reconstruct: bool = False
    compensate: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 <= self.target_macs <= 1.0:
            raise ValueError(f"target-macs must be in (0, 1], got {self.target_macs}")
        if self.round < 1:
            raise ValueError(f"round must be >= 1, got {self.round}")


def _weight_rows(node: ir.Node, index: int) -> np.ndarray:
    weight = node.inputs[1].const_value.numpy()
    if node.op_type == "Conv":
        return weight[index].ravel()
    if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
        return weight[index]
    return weight[:, index]


class Pruner:
    """Decide and apply the removal of channels for one model."""

    def __init__(
        self, model: ir.Model, options: Options, context: PassContext, analyse_only: bool = False
    ) -> None:
        self.model, self.options, self.context = model, options, context
        common_passes.ShapeInferencePass()(model)
        self.analysis = ChannelGraph(model)
        self.groups, frozen = self.analysis.groups()
        if not analyse_only:
            for group, reason in frozen:
                context.decline(f"channels of {', '.join(group.producer_nodes)}", reason)
        self.batches = None
        self.moments: dict[str, tuple[Moments, int]] = {}
        if context.calibration is not None:
            self.batches = list(context.calibration.batches(batch_size=16, limit=64))

    # ------------------------------------------------------------------ protection
    def protected(self, group: ChannelGroup) -> str | None:
        graph = self.model.graph
        inputs, outputs = set(graph.inputs), set(graph.outputs)
        component = group.components[0]
        if self.options.protect_first and any(
            node.inputs[0] in inputs for node, _ in component.producers
        ):
            return "first layer (protect-first=true)"
        if self.options.protect_last and any(
            any(out in outputs for out in node.outputs) for node, _ in component.consumers
        ):
            return "feeds the last layer (protect-last=true)"
        return None

    # ------------------------------------------------------------------ importance
    def importance(self, group: ChannelGroup, limit: int | None = None) -> np.ndarray:
        criterion = self.options.criterion
        if criterion == "auto":
            criterion = "l1" if self.batches is None else "output-error"
        if criterion in ("activation", "entropy", "output-error"):
            if self.batches is None:
                raise UsageError(f"prune{{criterion={criterion}}} needs calibration data (--calib)")
            if criterion == "output-error":
                scores = self._output_error_importance(group, limit)
                if scores is not None:
                    return scores
                criterion = "l1"
            else:
                return self._data_importance(group, criterion)
        scores = np.zeros(group.size)
        for i, component in enumerate(group.components):
            if criterion == "bn-gamma":
                gammas = [
                    abs(float(s.value.const_value.numpy()[s.index]))
                    for s in component.slices
                    if s.value.uses()
                    and s.value.uses()[0][0].op_type == "BatchNormalization"
                    and s.value.uses()[0][1] == 1
                ]
                if gammas:
                    scores[i] = sum(gammas)
                    continue
            for node, index in component.producers:
                rows = _weight_rows(node, index)
                scores[i] += (
                    float(np.sqrt(np.mean(rows**2)))
                    if criterion == "l2"
                    else float(np.abs(rows).mean())
                )
        return scores

    def _data_importance(self, group: ChannelGroup, criterion: str) -> np.ndarray:
        outputs = sorted({node.outputs[0].name for node, _ in group.components[0].producers})
        values = capture(self.model, outputs, self.batches)
        scores = np.zeros(group.size)
        for i, component in enumerate(group.components):
            for node, index in component.producers:
                act = values[node.outputs[0].name][:, index]
                if criterion == "activation":
                    scores[i] += float(np.abs(act).mean())
                else:
                    pooled = act.reshape(act.shape[0], -1).mean(axis=1)
                    hist, _ = np.histogram(pooled, bins=min(32, max(4, len(pooled) // 2)))
                    p = hist[hist > 0] / hist.sum()
                    scores[i] += float(-(p * np.log(p)).sum())
        return scores

    MAX_SELECTION_COLUMNS = 4608  # a 512-channel 3x3 conv; wider layers fall back to l1
    CAPTURE_BYTES = 1 << 30  # activations held at once while the moments are taken

    def _selection_consumers(self, group: ChannelGroup) -> dict[str, ir.Node] | None:
        """The group's consuming layers, or None when one cannot be costed (see below)."""
        nodes = {node.name: node for c in group.components for node, _ in c.consumers}
        for node in nodes.values():
            weight = node.inputs[1].const_value
            if node.op_type == "Conv":
                shape = node.inputs[0].shape
                columns = weight.size // weight.shape[0]
                if shape is None or shape.rank() != 4:
                    return None
            else:
                trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
                columns = weight.shape[1 if trans_b else 0]
            if columns > self.MAX_SELECTION_COLUMNS:
                return None
        return nodes or None

    def _prepare_moments(self, groups: list[ChannelGroup]) -> None:
        """Row moments of every consumer the groups' selection needs, on the calibration data.

        Activations are captured a few values at a time (``CAPTURE_BYTES``, sized on one
        sample) and reduced to :class:`Moments` at once, so one run of the model serves many
        groups and no more than a chunk of activations is held.
        """
        nodes: dict[str, ir.Node] = {}
        for group in groups:
            nodes.update(self._selection_consumers(group) or {})
        by_input: dict[str, list[ir.Node]] = defaultdict(list)
        for node in nodes.values():
            if node.name not in self.moments:
                by_input[node.inputs[0].name].append(node)
        if not by_input:
            return
        first = {name: array[:1] for name, array in self.batches[0].items()}
        probe = capture(self.model, sorted(by_input), [first])
        samples = sum(len(next(iter(batch.values()))) for batch in self.batches)
        chunks: list[list[str]] = [[]]
        held = 0
        for name in sorted(by_input):
            size = probe[name].nbytes * samples
            if chunks[-1] and held + size > self.CAPTURE_BYTES:
                chunks.append([])
                held = 0
            chunks[-1].append(name)
            held += size
        del probe
        for chunk in chunks:
            values = capture(self.model, chunk, self.batches)
            for name in chunk:
                for node in by_input[name]:
                    rows, per_channel = layer_rows(node, values[name])
                    self.moments[node.name] = (Moments.of(rows), per_channel)
            del values

    def _output_error_importance(
        self, group: ChannelGroup, limit: int | None = None
    ) -> np.ndarray | None:
        """Greedy removal order by the consumers' output error (:class:`RemovalCost`).

        Each step removes the component whose removal adds the least relative output error,
        summed over the group's consuming layers, with the refit (``reconstruct=true``) or the
        bias compensation accounted for. The score of a component is the error accumulated
        when it goes, so lower scores go first; after ``limit`` removals the rest are ranked
        by their cost as the next one. None (use ``l1``) when a consumer is not a 2-D Conv,
        Gemm or rank-2 MatMul, or is wider than ``MAX_SELECTION_COLUMNS`` columns.
        """
        nodes = self._selection_consumers(group)
        if nodes is None:
            logger.info("prune: %s ranked by l1 (consumer not costed)", group.producer_nodes)
            return None
        self._prepare_moments([group])
        columns: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for k, component in enumerate(group.components):
            for node, index in component.consumers:
                columns[node.name][k].append(index)
        layers = []
        for name, node in nodes.items():
            moments, per_channel = self.moments[name]
            blocks = {
                k: np.concatenate([np.arange(c * per_channel, (c + 1) * per_channel) for c in cs])
                for k, cs in columns[name].items()
            }
            layers.append(
                RemovalCost(moments, layer_matrix(node), blocks, refit=self.options.reconstruct)
            )
        return removal_order(layers, group.size, limit)

    # ------------------------------------------------------------------ budget
    def step(self, group: ChannelGroup) -> int:
        """Components per rounding step.

        A component of a grouped conv is a whole group of channels (RegNetX: 8), already a
        multiple of what vectorized kernels like.
        """
        component = group.components[0]
        width = min(Counter(name for name, _ in component.channels).values())
        return max(1, -(-self.options.round // width))

    def keep_count(self, size: int, remove: int, step: int | None = None) -> int:
        step = self.options.round if step is None else step
        if size <= step:
            return size
        keep = size - remove
        keep = max(step, int(math.floor(keep / step + 0.5)) * step)
        return min(size, keep)

    def plan(self) -> dict[int, list[int]]:
        """For each prunable group index, the component indices to remove."""
        candidates = []
        for index, group in enumerate(self.groups):
            reason = self.protected(group)
            if reason:
                self.context.decline(f"channels of {', '.join(group.producer_nodes)}", reason)
                continue
            candidates.append(index)
        uniform = not self.options.target_macs and self.options.scope == "uniform"
        limits = {}
        for i in candidates:
            size = self.groups[i].size
            wanted = int(size * self.options.ratio)
            limits[i] = size - self.keep_count(size, wanted, self.step(self.groups[i]))
        if self.batches is not None and self.options.criterion in ("auto", "output-error"):
            self._prepare_moments([self.groups[i] for i in candidates if not uniform or limits[i]])
        scores = {
            i: self.importance(self.groups[i], limits[i] if uniform else None)
            if limits[i] or not uniform
            else np.zeros(self.groups[i].size)  # nothing goes: no order needed
            for i in candidates
        }
        if self.options.target_macs:
            return self._plan_macs(candidates, scores)
        removal: dict[int, list[int]] = {}
        if self.options.scope == "global":
            pool = []
            for i in candidates:
                normalized = scores[i] / (scores[i].mean() or 1.0)
                pool.extend((score, i, j) for j, score in enumerate(normalized))
            pool.sort()
            quota = int(len(pool) * self.options.ratio)
            wanted: dict[int, int] = defaultdict(int)
            for _, i, _ in pool[:quota]:
                wanted[i] += 1
        else:
            wanted = {i: int(self.groups[i].size * self.options.ratio) for i in candidates}
        for i in candidates:
            size = self.groups[i].size
            step = self.step(self.groups[i])
            keep = self.keep_count(size, wanted.get(i, 0), step)
            if keep == size and wanted.get(i, 0):
                self.context.decline(
                    f"channels of {', '.join(self.groups[i].producer_nodes)}",
                    f"removing {wanted[i]} of {size} rounds back to {size} at round="
                    f"{self.options.round}; a smaller round (or a larger ratio) prunes it",
                )
            order = np.argsort(scores[i], kind="stable")
            removal[i] = sorted(int(j) for j in order[: size - keep])
        return removal

    def _plan_macs(
        self, candidates: list[int], scores: dict[int, np.ndarray]
    ) -> dict[int, list[int]]:
        """Greedy removal in ``round``-sized steps until the MAC target is met."""
        from lightir.analysis.cost import inferred_shapes, node_macs

        specs = input_specs(self.model)
        shapes_in = {s.name: tuple(d if isinstance(d, int) else 1 for d in s.shape) for s in specs}
        shapes = inferred_shapes(self.model, shapes_in)
        macs_by_node = {n.name: node_macs(n, shapes) for n in self.model.graph}
        total = sum(macs_by_node.values())
        target = self.options.target_macs * total
        steps = {i: self.step(self.groups[i]) for i in candidates}
        removed = {i: 0 for i in candidates}
        orders = {i: np.argsort(scores[i], kind="stable") for i in candidates}
        normalized = {i: scores[i] / (scores[i].mean() or 1.0) for i in candidates}
        # Channels each group's component contributes to each value (a Flatten gets a block).
        per_value: dict[str, dict[int, int]] = defaultdict(dict)
        for i in candidates:
            for name, _ in self.groups[i].components[0].channels:
                per_value[name][i] = per_value[name].get(i, 0) + 1

        def kept_fraction(value: ir.Value, state: dict[int, int]) -> float:
            counts = per_value.get(value.name)
            if not counts:
                return 1.0
            full = value.shape[1]
            return (full - sum(state[i] * n for i, n in counts.items())) / full

        def estimate(state: dict[int, int]) -> float:
            """MACs after removing ``state[i]`` channels of each group.

            Exact: MACs scale with kept output channels and, for dense layers, kept inputs.
            """
            result = 0.0
            for node in self.model.graph:
                macs = macs_by_node.get(node.name, 0)
                if not macs:
                    continue
                factor = kept_fraction(node.outputs[0], state)
                depthwise = node.op_type == "Conv" and node.attributes.get_int("group", 1) > 1
                if not depthwise:
                    factor *= kept_fraction(node.inputs[0], state)
                result += macs * factor
            return result

        curves = {i: self._sensitivity(i, orders[i]) for i in candidates} if self.batches else None
        current = total
        while current > target:
            best, best_cost, best_macs = None, math.inf, current
            for i in candidates:
                size, step = self.groups[i].size, steps[i]
                if size - removed[i] - step < step:
                    continue
                trial = dict(removed)
                trial[i] += step
                after = estimate(trial)
                saved = current - after
                if curves is not None:
                    # Measured output error of pruning this group alone, interpolated.
                    fractions, errors = curves[i]
                    now = np.interp(removed[i] / size, fractions, errors)
                    then = np.interp((removed[i] + step) / size, fractions, errors)
                    cost = float(then - now) / max(saved, 1.0)
                else:
                    taken = orders[i][removed[i] : removed[i] + step]
                    cost = float(normalized[i][taken].sum()) / max(saved, 1.0)
                if cost < best_cost:
                    best, best_cost, best_macs = i, cost, after
            if best is None:
                self.context.decline("target-macs", f"cannot reach {self.options.target_macs:g}")
                break
            removed[best] += steps[best]
            current = best_macs
        return {i: sorted(int(j) for j in orders[i][: removed[i]]) for i in candidates}

    SENSITIVITY_FRACTIONS = (0.25, 0.5, 0.75)

    def _sensitivity(self, index: int, order: np.ndarray) -> tuple[list[float], list[float]]:
        """Relative output error when only group ``index`` loses its least important channels.

        Measured on the calibration batches at a few fractions of the group; returns the
        curve as (fractions, errors) starting at (0, 0).
        """
        from lightir.onnx_bridge import OrtModel

        group = self.groups[index]
        reference = OrtModel(self.model).run_all(self.batches)
        fractions, errors = [0.0], [0.0]
        for fraction in self.SENSITIVITY_FRACTIONS:
            count = int(group.size * fraction)
            if count == 0:
                continue
            trial = clone_model(self.model)
            pruner = Pruner(trial, self.options, PassContext(), analyse_only=True)
            position = next(
                k for k, g in enumerate(pruner.groups) if g.producer_nodes == group.producer_nodes
            )
            pruner.apply({position: sorted(int(j) for j in order[:count])})
            outputs = OrtModel(trial).run_all(self.batches)
            error = max(
                float(np.linalg.norm(o[name] - r[name]) / (np.linalg.norm(r[name]) or 1.0))
                for o, r in zip(outputs, reference)
                for name in r
            )
            fractions.append(count / group.size)
            errors.append(error)
        logger.debug("sensitivity of %s: %s", group.producer_nodes, list(zip(fractions, errors)))
        return fractions, errors

    # ------------------------------------------------------------------ apply
    def apply(self, removal: dict[int, list[int]]) -> dict[str, int]:
        removed_components: list[Component] = [
            self.groups[i].components[j] for i, js in removal.items() for j in js
        ]
        if not removed_components:
            return {"channels_removed": 0}
        self.consumers = sorted({n.name for c in removed_components for n, _ in c.consumers})
        compensation = (
            self._mean_contributions(removed_components) if self.options.compensate else {}
        )
        deletions: dict[tuple[int, int], tuple[ir.Value, int, set[int]]] = {}
        for component in removed_components:
            for s in component.slices:
                deletions.setdefault((id(s.value), s.axis), (s.value, s.axis, set()))[2].add(
                    s.index
                )
        old_outputs = {}
        for node in self.model.graph:
            if node.name in self.consumers:
                shape = node.inputs[1].const_value.shape.numpy()
                transposed = node.op_type == "MatMul" or (
                    node.op_type == "Gemm" and not node.attributes.get_int("transB", 0)
                )
                old_outputs[node.name] = shape[1] if transposed else shape[0]
        multipliers = {
            node.name: node.inputs[1].const_value.shape[0] // node.attributes.get_int("group", 1)
            for node in self.model.graph
            if node.op_type == "Conv" and node.attributes.get_int("group", 1) > 1
        }
        for value, axis, indices in deletions.values():
            kept = np.delete(value.const_value.numpy(), sorted(indices), axis=axis)
            value.const_value = ir.tensor(np.ascontiguousarray(kept), name=value.name)
            value.shape = ir.Shape(kept.shape)
        for node in self.model.graph:  # depthwise convs keep one group per channel
            if node.name in multipliers:
                groups = node.inputs[1].const_value.shape[0] // multipliers[node.name]
                node.attributes["group"] = ir.AttrInt64("group", groups)
        compensation = {
            name: np.delete(delta, self._removed_outputs(name, deletions))
            for name, delta in compensation.items()
        }
        self.kept_outputs = {
            name: np.delete(np.arange(old_outputs[name]), self._removed_outputs(name, deletions))
            for name in self.consumers
        }
        self._update_split_sizes(removed_components)
        self._fold_compensation(compensation)
        self._refresh_shapes()
        return {
            "channels_removed": len(removed_components),
            "layers_touched": len(self.consumers),
            "compensated_layers": len(compensation),
        }

    def _removed_outputs(self, node_name: str, deletions) -> list[int]:
        """Output channels of ``node_name`` removed by ``deletions`` (its own weight rows)."""
        node = next(n for n in self.model.graph if n.name == node_name)
        weight = node.inputs[1]
        axis = 0
        if node.op_type == "Gemm" and not node.attributes.get_int("transB", 0):
            axis = 1
        elif node.op_type == "MatMul":
            axis = 1
        entry = deletions.get((id(weight), axis))
        return sorted(entry[2]) if entry else []

    def _mean_contributions(self, removed: list[Component]) -> dict[str, np.ndarray]:
        """Per consumer node: bias increment from the removed channels' mean values."""
        increments: dict[str, np.ndarray] = {}
        means = self._channel_means(removed)
        for component, mean in zip(removed, means):
            if mean is None or mean == 0:
                continue
            for node, index in component.consumers:
                weight = node.inputs[1].const_value.numpy()
                if node.op_type == "Conv":
                    column = weight[:, index].reshape(weight.shape[0], -1).sum(axis=1)
                elif node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
                    column = weight[:, index] * node.attributes.get_float("alpha", 1.0)
                else:
                    column = weight[index]
                increments[node.name] = increments.get(node.name, 0) + column * mean
        return increments

    def _channel_means(self, removed: list[Component]) -> list[float | None]:
        """Mean value of each removed channel as its consumers see it."""
        if self.batches is not None:
            names = sorted(
                {
                    name
                    for c in removed
                    for name, _ in c.channels
                    if any(n.inputs[0].name == name for n, _ in c.consumers)
                }
            )
            values = capture(self.model, names, self.batches) if names else {}
            result = []
            for component in removed:
                seen = [
                    values[name][:, ch].mean() for name, ch in component.channels if name in values
                ]
                result.append(float(np.mean(seen)) if seen else None)
            return result
        return [self._bn_mean(component) for component in removed]

    def _bn_mean(self, component: Component) -> float | None:
        """``E[act(gamma z + beta)]`` from the BN feeding the consumers, ``z ~ N(0, 1)``."""
        for node, _ in component.consumers:
            found = bn_output_means(node.inputs[0])
            if found is None:
                return None
            bn, means = found
            channel = next(ch for name, ch in component.channels if name == bn.outputs[0].name)
            return float(means[channel])
        return None

    def _fold_compensation(self, increments: dict[str, np.ndarray]) -> None:
        """Add each consumer's bias increment (creating the bias input if it has none)."""
        for node in self.model.graph:
            if node.name not in increments:
                continue
            delta = np.asarray(increments[node.name], np.float64)
            if node.op_type == "Gemm":
                # C is scaled by beta; keep beta and divide the increment by it.
                delta = delta / node.attributes.get_float("beta", 1.0)
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                bias_value = node.inputs[2]
                bias = bias_value.const_value.numpy()
                new = bias.astype(np.float64) + np.broadcast_to(delta, bias.shape[-1:])
                bias_value.const_value = ir.tensor(new.astype(bias.dtype), name=bias_value.name)
                continue
            name = f"{node.name}_pruned_bias"
            dtype = node.inputs[1].const_value.numpy().dtype
            value = ir.val(name, const_value=ir.tensor(delta.astype(dtype), name=name))
            node.graph.register_initializer(value)
            node.resize_inputs(3)
            node.replace_input_with(2, value)

    def _update_split_sizes(self, removed: list[Component]) -> None:
        """Split on axis 1 with explicit sizes: subtract the channels removed per output.

        Sizes are an input from opset 13 and the ``split`` attribute before. A sizes tensor
        that other nodes share (exporters and simplifiers deduplicate ``[c, c]``) is not
        edited in place: the Split gets a tensor of its own.
        """
        removed_per_value: dict[str, int] = defaultdict(int)
        for component in removed:
            for name, _ in component.channels:
                removed_per_value[name] += 1
        for node in self.model.graph:
            if node.op_type != "Split":
                continue
            as_input = len(node.inputs) > 1 and node.inputs[1] is not None
            if as_input:
                sizes = node.inputs[1].const_value.numpy()
            elif "split" in node.attributes:
                sizes = np.array(node.attributes.get_ints("split"), np.int64)
            else:
                continue
            new = np.array(
                [s - removed_per_value.get(out.name, 0) for s, out in zip(sizes, node.outputs)],
                dtype=sizes.dtype,
            )
            if np.array_equal(new, sizes):
                continue
            if not as_input:
                node.attributes["split"] = ir.AttrInt64s("split", [int(v) for v in new])
            elif len(node.inputs[1].uses()) == 1:
                node.inputs[1].const_value = ir.tensor(new, name=node.inputs[1].name)
            else:
                name = unique_name(node.graph, f"{node.name}_split_sizes")
                value = ir.val(name, const_value=ir.tensor(new, name=name))
                node.graph.register_initializer(value)
                node.replace_input_with(1, value)

    def _refresh_shapes(self) -> None:
        graph = self.model.graph
        keep = set(graph.inputs) | set(graph.outputs)
        for node in graph:
            for out in node.outputs:
                if out not in keep:
                    out.shape = None
        common_passes.ShapeInferencePass()(self.model)


@register_pass("prune", contract=Contract.lossy(min_cosine=0.9))
class Prune(Pass):
    """Remove whole channels across residuals, concats and depthwise convs (smaller dense model)."""

    Options = Options

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Analyse, rank, remove, then refit or compensate the consumers."""
        options = self.options
        if options.reconstruct and context.calibration is None:
            raise UsageError(
                "prune{reconstruct=true} needs calibration data: pass --calib FILE.npz"
            )
        original = clone_model(model) if options.reconstruct else None
        pruner = Pruner(model, options, context)
        removal = pruner.plan()
        stats = pruner.apply(removal)
        if options.reconstruct and stats["channels_removed"]:
            stats["refit_layers"] = len(
                refit_layers(original, model, pruner.consumers, pruner.batches, pruner.kept_outputs)
            )
        stats["groups"] = len(pruner.groups)
        return PassResult(model, modified=stats["channels_removed"] > 0, stats=stats)
