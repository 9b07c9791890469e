"""The pruning planner: channel groups + scores + a budget -> the components to remove.

It reads the model and never changes it (the sensitivity curves of ``target-macs`` prune
copies). Budgets:

* ``ratio=R`` with ``scope=uniform``: each group loses ``R`` of its components;
* ``ratio=R`` with ``scope=global``: the lowest ``R`` of all components, scores normalized
  by each group's mean;
* ``target-macs=R``: :func:`lightir.analysis.budget.allocate` removes ``round``-sized steps
  by least cost per MAC saved: the measured output error of pruning the group alone (with
  calibration data) or the normalized scores of the channels taken.

Kept counts are multiples of ``round`` (a component of a grouped conv counts its width), and
the first and last layers are protected unless told otherwise.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict

import numpy as np
import onnx_ir as ir

from lightir.analysis.budget import allocate
from lightir.analysis.channels import ChannelGraph, ChannelGroup, Component
from lightir.analysis.cost import inferred_shapes, node_macs
from lightir.data import input_specs
from lightir.ir_util import clone_model
from lightir.onnx_bridge import OrtModel
from lightir.pass_base import PassContext
from lightir.prune.importance import ChannelScorer
from lightir.prune.surgery import remove_components

logger = logging.getLogger(__name__)

SENSITIVITY_FRACTIONS = (0.25, 0.5, 0.75)


def where(group: ChannelGroup) -> str:
    """How declines name a group."""
    return f"channels of {', '.join(group.producer_nodes)}"


class PrunePlanner:
    """Plans the removal for one model; ``options`` are prune's."""

    def __init__(
        self,
        model: ir.Model,
        groups: list[ChannelGroup],
        options,
        context: PassContext,
        batches: list[dict] | None,
    ) -> None:
        self.model, self.groups, self.options = model, groups, options
        self.context, self.batches = context, batches
        self.scorer = ChannelScorer(model, batches, options.refit)

    def protected(self, group: ChannelGroup) -> str | None:
        """Why ``group`` must stay whole, or None."""
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

    def step(self, group: ChannelGroup, round_to: int | None = None) -> int:
        """Components per rounding step of ``round_to`` channels (default: the ``round`` option).

        A component of a grouped conv is a whole group of channels (RegNetX: 8), already a
        multiple of what vectorized kernels like.
        """
        component = group.components[0]
        width = min(Counter(name for name, _ in component.channels).values())
        return max(1, -(-(round_to or self.options.round) // width))

    def keep_count(self, size: int, remove: int, step: int) -> int:
        """Components kept when ``remove`` of ``size`` are asked to go, in multiples of step."""
        if size <= step:
            return size
        keep = size - remove
        keep = max(step, int(math.floor(keep / step + 0.5)) * step)
        return min(size, keep)

    def plan(self) -> list[Component]:
        """The components to remove, group by group."""
        candidates = []
        for index, group in enumerate(self.groups):
            reason = self.protected(group)
            if reason:
                self.context.decline(where(group), reason)
                continue
            candidates.append(index)
        options = self.options
        uniform = not options.target_macs and options.scope == "uniform"
        limits = {}
        for i in candidates:
            size = self.groups[i].size
            wanted = int(size * options.ratio)
            limits[i] = size - self.keep_count(size, wanted, self.step(self.groups[i]))
        scored = [i for i in candidates if limits[i] or not uniform]
        wanted = [(self.groups[i], limits[i] if uniform else None) for i in scored]
        scores = dict(zip(scored, self.scorer.scores_many(wanted, options.criterion)))
        for i in candidates:
            scores.setdefault(i, np.zeros(self.groups[i].size))  # nothing goes: no order needed
        removal = (
            self._by_macs(candidates, scores)
            if options.target_macs
            else self._by_ratio(candidates, scores)
        )
        return [self.groups[i].components[j] for i, js in removal.items() for j in js]

    def _by_ratio(self, candidates: list[int], scores: dict) -> dict[int, list[int]]:
        options = self.options
        if options.scope == "global":
            pool = []
            for i in candidates:
                normalized = scores[i] / (scores[i].mean() or 1.0)
                pool.extend((score, i, j) for j, score in enumerate(normalized))
            pool.sort()
            wanted: dict[int, int] = defaultdict(int)
            for _, i, _ in pool[: int(len(pool) * options.ratio)]:
                wanted[i] += 1
        else:
            wanted = {i: int(self.groups[i].size * options.ratio) for i in candidates}
        removal = {}
        for i in candidates:
            size = self.groups[i].size
            keep = self.keep_count(size, wanted.get(i, 0), self.step(self.groups[i]))
            if keep == size and wanted.get(i, 0):
                self.context.decline(
                    where(self.groups[i]),
                    f"removing {wanted[i]} of {size} rounds back to {size} at round="
                    f"{options.round}; a smaller round (or a larger ratio) prunes it",
                )
            order = np.argsort(scores[i], kind="stable")
            removal[i] = sorted(int(j) for j in order[: size - keep])
        return removal

    def _by_macs(self, candidates: list[int], scores: dict) -> dict[int, list[int]]:
        """``round``-sized steps by least cost per MAC saved until the MAC target is met."""
        specs = input_specs(self.model)
        shapes_in = {s.name: tuple(d if isinstance(d, int) else 1 for d in s.shape) for s in specs}
        shapes = inferred_shapes(self.model, shapes_in)
        macs_by_node = {node: node_macs(node, shapes) for node in self.model.graph}
        total = sum(macs_by_node.values())
        steps = {i: self.step(self.groups[i]) for i in candidates}
        orders = {i: np.argsort(scores[i], kind="stable") for i in candidates}
        normalized = {i: scores[i] / (scores[i].mean() or 1.0) for i in candidates}
        # Channels each group's component contributes to each value (a Flatten gets a block).
        per_value: dict[str, dict[int, int]] = defaultdict(dict)
        for i in candidates:
            for name, _ in self.groups[i].components[0].channels:
                per_value[name][i] = per_value[name].get(i, 0) + 1

        def kept_fraction(value: ir.Value, removed: dict[int, int]) -> float:
            counts = per_value.get(value.name)
            if not counts:
                return 1.0
            full = value.shape[1]
            return (full - sum(removed[i] * n for i, n in counts.items())) / full

        def estimate(removed: dict[int, int]) -> float:
            """MACs after removing ``removed[i]`` channels of each group.

            Exact: MACs scale with kept output channels and, for dense layers, kept inputs.
            """
            result = 0.0
            for node, macs in macs_by_node.items():
                if not macs:
                    continue
                factor = kept_fraction(node.outputs[0], removed)
                depthwise = node.op_type == "Conv" and node.attributes.get_int("group", 1) > 1
                if not depthwise:
                    factor *= kept_fraction(node.inputs[0], removed)
                result += macs * factor
            return result

        curves = {i: self._sensitivity(i, orders[i]) for i in candidates} if self.batches else None

        def propose(i: int, levels: dict, current: float) -> tuple[float, float] | None:
            size, step = self.groups[i].size, steps[i]
            removed = {k: level * steps[k] for k, level in levels.items()}
            if size - removed[i] - step < step:
                return None
            after = estimate({**removed, i: removed[i] + step})
            saved = current - after
            if curves is not None:
                # Measured output error of pruning this group alone, interpolated.
                fractions, errors = curves[i]
                now = np.interp(removed[i] / size, fractions, errors)
                then = np.interp((removed[i] + step) / size, fractions, errors)
                return float(then - now) / max(saved, 1.0), after
            taken = orders[i][removed[i] : removed[i] + step]
            return float(normalized[i][taken].sum()) / max(saved, 1.0), after

        levels, met = allocate(candidates, total, self.options.target_macs * total, propose)
        if not met:
            self.context.decline("target-macs", f"cannot reach {self.options.target_macs:g}")
        return {i: sorted(int(j) for j in orders[i][: levels[i] * steps[i]]) for i in candidates}

    def _sensitivity(self, index: int, order: np.ndarray) -> tuple[list[float], list[float]]:
        """Relative output error when only group ``index`` loses its least important channels.

        Measured on the calibration batches at a few fractions of the group (on a copy of the
        model); returns the curve as (fractions, errors) starting at (0, 0).
        """
        group = self.groups[index]
        reference = OrtModel(self.model).run_all(self.batches)
        fractions, errors = [0.0], [0.0]
        for fraction in SENSITIVITY_FRACTIONS:
            count = int(group.size * fraction)
            if count == 0:
                continue
            trial = clone_model(self.model)
            same = ChannelGraph(trial).groups()[0][index]  # a copy has the same groups in order
            assert same.producer_nodes == group.producer_nodes, "the copy's groups differ"
            # The compensation of a trial uses the BN statistics, as it always has.
            removed = [same.components[int(j)] for j in order[:count]]
            remove_components(trial, removed, compensate=self.options.compensate)
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
