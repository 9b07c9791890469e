"""What ``compress`` can change in a model, what each change costs, and applying a choice.

A :class:`Unit` is one thing the search decides on, with its :class:`Level` s (level 0 is
"unchanged"):

* ``prune``: a channel group (:mod:`lightir.analysis.channels`) keeping fewer of its
  channels (``ratios``, rounded to ``round`` like ``prune``), its channels ordered once by
  ``prune``'s output-error importance;
* ``lowrank``: a Conv / Gemm / MatMul factorized by a low-rank method (``svd`` for 1x1 and
  dense layers, ``spatial-svd`` and ``tucker`` for larger kernels) at a rank keeping a share
  of the weight's energy (``energies``), found through the pass registry;
* ``int8``: a weighted layer run in int8 instead of float32.

Each level's ``delta`` is the change of the objective it brings alone, from the layers whose
shapes it changes, priced by a :class:`lightir.search.latency.LatencyTable`;
:meth:`Space.step_cost` prices a step from a whole choice, so interactions count (a pruned
layer's factorized chain keeps fewer channels at both ends; int8 of a pruned layer).

:meth:`Space.apply` applies a choice (a level per unit) to a copy of the model in the order
that keeps every decision meaningful: pruning first (its channel orders were computed on
the unpruned model), then factorization (at the rank priced, capped by what pruning left of
the layer), then int8, which quantizes the chosen layers, the chains they became, and the
ops between quantized layers.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lightir import memory, registry
from lightir.analysis.channels import ChannelGraph
from lightir.analysis.cost import inferred_shapes
from lightir.data import concrete_shape, input_specs
from lightir.io import tensor_bytes
from lightir.ir_util import clone_model
from lightir.lowrank.driver import (
    LowRankOptions,
    cheaper,
    energy_rank,
    factorize_layers,
    placeholder,
)
from lightir.lowrank.factor import ConvStep, Unstable
from lightir.onnx_bridge import Probe
from lightir.pass_base import PassContext
from lightir.prune.importance import ChannelScorer
from lightir.prune.plan import PrunePlanner
from lightir.prune.surgery import prune_components
from lightir.quant.plan import WEIGHTED, quantizable_nodes
from lightir.quant.prepare import prepare_int8
from lightir.quant.qdq import write_qdq
from lightir.rewrite import unique_node_name
from lightir.search.latency import ConvSpec, LatencyTable, conv_channel_block

logger = logging.getLogger(__name__)

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75)
PRICED = ("Conv", "Gemm", "MatMul")  # ops the latency table prices (as convolutions)
ENERGIES = (0.95, 0.85, 0.7, 0.5)
PASS_ROUND = LowRankOptions().round  # the rank rounding svd / spatial-svd / tucker default to


@dataclass
class Level:
    """One setting of a unit, its objective change alone, and its measured sensitivity."""

    label: str
    setting: Any
    delta: float
    error: float = math.nan  # relative squared output error when alone
    drop: float = math.nan  # the metric's drop when alone
    chain: list[ConvSpec] = field(default_factory=list)  # lowrank: the chain's layers
    # What the whole model measured with this level alone adds to the table's price (int8:
    # the Q/DQ boundaries and layout changes its neighbours see).
    correction: float = 0.0
    # The single-pass setting it comes from: the share of channels pruned, the energy kept.
    strength: float = 1.0


@dataclass
class Unit:
    """A channel group, a factorizable layer or a quantizable layer."""

    kind: str
    key: Any  # group index, or node name
    label: str
    levels: list[Level] = field(default_factory=list)
    # The layers it changes; for prune, the channels each removed component takes from the
    # layer's inputs and outputs.
    touches: dict[ir.Node, tuple[int, int]] = field(default_factory=dict)
    # Every level whose sensitivity was measured, useful or not: a single pass on every layer
    # takes its own setting even where the path would skip it (``Space.uniform``).
    measured: list[Level] = field(default_factory=list)
    # Every level the unit had before the sensitivity kept the measured and useful ones: a
    # sensitivity cut short by its time share leaves some units with none, and a single pass
    # still changes them (PP-OCRv6's small recognizer: ``int8`` on 30 of 55 layers, 1.61x,
    # where the int8 pass on all of them is 1.80x).
    every: list[Level] = field(default_factory=list)
    # prune: per ratio, the channels ``prune{ratio=R}`` keeps with its own rounding (the
    # measured channel block), which ``uniform`` matches rather than the level's ratio.
    targets: dict[float, int] = field(default_factory=dict)
    # lowrank: per (method, energy), the level ``method{energy=E}`` itself factorizes the
    # layer at (its rank rounding, taken wherever the chain has fewer MACs and params),
    # whether or not the latency table prices it as a saving; absent where the pass would
    # leave the layer whole.
    passes: dict[tuple[str, float], Level] = field(default_factory=dict)


def name_nodes(model: ir.Model) -> int:
    """Give every unnamed node a unique name (choices refer to layers by name)."""
    count = 0
    for node in model.graph:
        if not node.name:
            node.name = unique_node_name(model.graph, node.op_type.lower())
            count += 1
    return count


def one_sample_shapes(model: ir.Model, batch: dict[str, np.ndarray] | None) -> dict[str, tuple]:
    """Shapes of every value for one sample (the calibration's sizes when given).

    Inferred by onnx; where inference leaves a weighted layer's input with an unknown dim
    and a batch is given, measured by running one sample: PP-OCRv6's recognizer reshapes
    its feature map by a computed shape, so inference loses the sequence length and its 9
    weighted MatMuls (the neck and the 18710-class head) had no layer spec, so no int8,
    pruning or factorization level: the search's "int8 on every layer" left them in
    float32 and ran 5-10% slower than the int8 pass.
    """
    specs = input_specs(model)
    if batch is not None:
        inputs = {name: (1, *np.shape(array)[1:]) for name, array in batch.items()}
    else:
        inputs = {spec.name: concrete_shape(spec, 1, {}) for spec in specs}
    shapes = inferred_shapes(model, inputs)
    if batch is None:
        return shapes
    unknown = sorted(
        {
            node.inputs[0].name
            for node in model.graph
            if node.op_type in WEIGHTED
            and node.inputs
            and node.inputs[0] is not None
            and not all(isinstance(d, int) for d in shapes.get(node.inputs[0].name) or ("?",))
        }
    )
    if unknown:
        one = {name: np.asarray(array)[:1] for name, array in batch.items()}
        for name, array in Probe(model, unknown).run(one).items():
            shapes[name] = tuple(array.shape)
    return shapes


class Space:
    """The units of one model (folded, every node named) and how to apply a choice."""

    def __init__(
        self,
        model: ir.Model,
        table: LatencyTable,
        fit: PassContext,
        *,
        kinds: tuple[str, ...] = ("prune", "lowrank", "int8"),
        round_to: int = 8,
        refit: bool = True,
    ) -> None:
        self.model, self.table, self.fit = model, table, fit
        self.round_to, self.refit = round_to, refit
        common_passes.ShapeInferencePass()(model)  # the channel analysis reads value shapes
        batches = (
            list(fit.calibration.batches(batch_size=16, limit=64))
            if fit.calibration is not None
            else None
        )
        self.batches = batches
        self.shapes = one_sample_shapes(model, batches[0] if batches else None)
        self.specs = {
            node: spec
            for node in model.graph
            if (spec := ConvSpec.of_node(node, self.shapes)) is not None
        }
        self.units: list[Unit] = []
        self.orders: dict[int, np.ndarray] = {}
        self.layers: dict[tuple[ir.Node, str], Any] = {}  # (node, low-rank method) -> layer
        self._chains: dict[tuple, list[ConvSpec] | None] = {}
        # A model's worth of weights is what is freed between phases (ResNet-50: 100 MB).
        self.weight_bytes = tensor_bytes(model)
        memory.release(self.weight_bytes)  # what the passes before freed
        if "prune" in kinds:
            self._prune_units()
            memory.release(self.weight_bytes)
        if "lowrank" in kinds:
            self._lowrank_units()
        if "int8" in kinds:
            self._int8_units()
        self.by_node: dict[ir.Node, list[int]] = {}
        for index, unit in enumerate(self.units):
            for node in unit.touches:
                self.by_node.setdefault(node, []).append(index)

    # ------------------------------------------------------------------------ the units
    def base_cost(self) -> float:
        """The objective of the layers the table prices, unchanged."""
        return self.cost({})

    def _prune_units(self) -> None:
        groups, _ = ChannelGraph(self.model).groups()
        options = SimpleNamespace(
            round=self.round_to,
            protect_first=True,
            protect_last=True,
            criterion="auto",
            refit=self.refit,
            scope="uniform",
            target_macs=0.0,
            ratio=0.0,
            compensate=True,
        )
        planner = PrunePlanner(self.model, groups, options, PassContext(), self.batches)
        candidates = []
        for index, group in enumerate(groups):
            if planner.protected(group) or group.components[0].frozen:
                continue
            component = group.components[0]
            made = Counter(node for node, _ in component.producers)
            read = Counter(node for node, _ in component.consumers)
            touched = set(made) | set(read)
            if any(n not in self.specs and n.op_type in PRICED for n in touched):
                continue  # a layer the table cannot price
            touches = {n: (read[n], made[n]) for n in touched if n in self.specs}
            step = planner.step(group)
            ratios: dict[int, float] = {}  # keep -> the first ratio that gives it
            for r in RATIOS:
                ratios.setdefault(planner.keep_count(group.size, int(group.size * r), step), r)
            # What prune{ratio=R} keeps, rounding to its default (the measured block).
            pass_step = planner.step(group, conv_channel_block())
            targets = {
                r: planner.keep_count(group.size, int(group.size * r), pass_step) for r in RATIOS
            }
            levels = []
            for keep in sorted(ratios, reverse=True):
                if keep >= group.size:
                    continue
                removed = group.size - keep
                resized = {
                    n: resize(self.specs[n], removed * taken[0], removed * taken[1])
                    for n, taken in touches.items()
                }
                if any(spec is None for spec in resized.values()):
                    break
                delta = sum(
                    self.table.cost(new) - self.table.cost(self.specs[n])
                    for n, new in resized.items()
                )
                label = f"keep {keep} of {group.size}"
                levels.append(Level(label, (keep, group.size), delta, strength=ratios[keep]))
            if levels:
                candidates.append(index)
                label = f"channels of {', '.join(group.producer_nodes)}"
                self.units.append(Unit("prune", index, label, levels, touches, targets=targets))
        # Channel orders once, on the unpruned model: prune's output-error importance.
        scorer = ChannelScorer(self.model, self.batches, self.refit)
        wanted = []
        for index in candidates:
            unit = next(u for u in self.units if u.kind == "prune" and u.key == index)
            limit = groups[index].size - min(level.setting[0] for level in unit.levels)
            wanted.append((groups[index], limit))
        for index, scores in zip(candidates, scorer.scores_many(wanted, "auto")):
            self.orders[index] = np.argsort(scores, kind="stable")

    def _lowrank_units(self) -> None:
        methods = {}
        for name in ("svd", "spatial-svd", "tucker"):
            cls = registry.get_pass(name)
            if cls is not None:
                methods[name] = cls().method()
        for node, spec in self.specs.items():
            if spec.group != 1:
                continue
            names = ("svd",) if spec.kernel == (1, 1) else ("spatial-svd", "tucker")
            levels, passes = [], {}
            for method_name in names:
                method = methods.get(method_name)
                layer = method.layer(node) if method is not None else None
                if layer is None or not np.isfinite(layer.weight).all():
                    continue
                seen = set()
                for energy in ENERGIES:
                    # The pass's own setting first: its rounding (the pass's default), taken
                    # where the chain is cheaper in MACs and params.
                    try:
                        rank = energy_rank(method, layer, energy, PASS_ROUND)
                        steps = method.shapes(layer, rank)
                    except Unstable:
                        steps = None
                    full = method.full_rank(layer)
                    if steps is not None and rank < full and cheaper(layer, steps):
                        chain = self._chain_specs(spec, steps)
                        self.layers[(node, method_name)] = layer
                        delta = self.table.chain(chain) - self.table.cost(spec)
                        label = f"{method_name} energy {energy:g} (rank {rank})"
                        passes[(method_name, energy)] = Level(
                            label, (method_name, rank), delta, chain=chain, strength=energy
                        )
                    try:
                        rank = method.energy_rank(layer, energy)
                        rank = min(
                            method.full_rank(layer), -(-rank // self.round_to) * self.round_to
                        )
                        if rank in seen or rank >= method.full_rank(layer):
                            continue
                        seen.add(rank)
                        steps = method.shapes(layer, rank)
                    except Unstable:
                        continue
                    chain = self._chain_specs(spec, steps)
                    self.layers[(node, method_name)] = layer
                    delta = self.table.chain(chain) - self.table.cost(spec)
                    if delta < 0:
                        label = f"{method_name} energy {energy:g} (rank {rank})"
                        levels.append(
                            Level(label, (method_name, rank), delta, chain=chain, strength=energy)
                        )
            levels = pareto(levels)
            if levels or passes:
                # A unit with no useful level still carries the pass's settings (uniform).
                label = f"{node.op_type} '{node.name}'"
                self.units.append(
                    Unit("lowrank", node.name, label, levels, {node: (0, 0)}, passes=passes)
                )

    @staticmethod
    def _chain_specs(spec: ConvSpec, steps: list[ConvStep]) -> list[ConvSpec]:
        specs, height, width = [], spec.height, spec.width
        for step in steps:
            cout, per_group, kh, kw = step.weight.shape
            new = ConvSpec(
                cin=per_group * step.group,
                cout=cout,
                kernel=(kh, kw),
                height=height,
                width=width,
                group=step.group,
                strides=tuple(step.strides),
                pads=tuple(step.pads),
                dilations=tuple(step.dilations),
            )
            specs.append(new)
            height, width = new.out_size
        return specs

    def _int8_units(self) -> None:
        quantizable = set(quantizable_nodes(self.model.graph, PassContext()))
        for node, spec in self.specs.items():
            if node not in quantizable or node.op_type not in WEIGHTED:
                continue
            delta = self.table.cost(spec.with_(int8=True)) - self.table.cost(spec)
            label = f"{node.op_type} '{node.name}'"
            level = Level("int8", True, delta)
            self.units.append(Unit("int8", node.name, label, [level], {node: (0, 0)}))

    def families(self) -> list[tuple[str, str | None, tuple[float, ...]]]:
        """The single passes the space can express: kind, low-rank method, strengths.

        Strengths go from the strongest (cheapest) to the weakest.
        """
        families: list[tuple[str, str | None, tuple[float, ...]]] = []
        kinds = {unit.kind for unit in self.units if unit.levels}
        if "prune" in kinds:
            families.append(("prune", None, tuple(sorted(RATIOS, reverse=True))))
        methods = {
            method
            for u in self.units
            if u.kind == "lowrank"
            for method in [lv.setting[0] for lv in u.levels] + [m for m, _ in u.passes]
        }
        for method in ("svd", "spatial-svd", "tucker"):
            if method in methods:
                families.append(("lowrank", method, tuple(sorted(ENERGIES))))
        if "int8" in kinds:
            families.append(("int8", None, (1.0,)))
        return families

    def uniform(self, kind: str, method: str | None, strength: float) -> dict[int, int]:
        """The choice a single pass makes at ``strength``; units it cannot change stay as they are.

        For low-rank, each layer gets the rank ``method{energy=strength}`` gives it (its rounding,
        where the chain has fewer MACs and params), whatever the table prices it at: on MTCNN O-Net
        the table's levels left out two of the four layers ``spatial-svd{energy=0.7}`` factorizes.
        Every unit of ``kind`` otherwise goes to the level nearest ``strength``, the stronger one on
        a tie, among every level measured: the path keeps only the levels that save the most for
        their error, but ``prune{ratio=0.6}`` prunes every group at 0.6 whether or not the table
        prices it cheaper than 0.5. For prune, nearest means nearest the channels the pass itself
        keeps at that ratio, with its own rounding (the measured channel block, where the search's
        levels round to 8): digits at 0.6 keeps 16 of 48, where the level nearest 0.6 by ratio kept
        24. A measured level the path dropped is appended to the unit's levels (after the path's, so
        their indices stand).
        """
        choice = {}
        for index, unit in enumerate(self.units):
            if unit.kind != kind:
                continue
            pool = list(unit.levels)
            pool += [lv for lv in unit.measured + unit.every if lv not in pool]
            if kind == "lowrank":
                # What method{energy=strength} does to this layer, or nothing where it leaves
                # the layer whole.
                nearest = unit.passes.get((method, strength))
                if nearest is None:
                    continue
                same = [lv for lv in unit.levels if lv.setting == nearest.setting]
                if same:
                    nearest = same[0]
                elif nearest not in unit.levels:
                    unit.levels.append(nearest)
                choice[index] = unit.levels.index(nearest) + 1
                continue
            options = [level for level in pool if method is None or level.setting[0] == method]
            if not options:
                continue
            if kind == "prune" and strength in unit.targets:
                # The channels prune{ratio=strength} keeps; fewer on a tie. A unit it leaves
                # whole (rounded up to its size) stays whole.
                target = unit.targets[strength]
                if target >= options[0].setting[1]:
                    continue
                nearest = min(options, key=lambda lv: (abs(lv.setting[0] - target), lv.setting[0]))
            else:
                # On a tie the stronger level wins: prune strengths grow, energies shrink.
                stronger = 1 if kind == "prune" else -1
                nearest = min(
                    options, key=lambda lv: (abs(lv.strength - strength), -stronger * lv.strength)
                )
            if nearest not in unit.levels:
                unit.levels.append(nearest)
            choice[index] = unit.levels.index(nearest) + 1
        return choice

    # ------------------------------------------------------------------------ pricing
    def node_layers(self, node: ir.Node, choice: dict[int, int]) -> list[ConvSpec]:
        """The layers ``node`` becomes under ``choice`` (unit index -> level).

        Its channels as pruned, its chain when factorized (at the rank chosen on the unpruned
        layer), in int8 when chosen.
        """
        spec = self.specs[node]
        fewer_in = fewer_out = 0
        chain, int8 = None, False
        factorized = None
        for index in self.by_node.get(node, ()):
            level = choice.get(index, 0)
            if not level:
                continue
            unit = self.units[index]
            setting = unit.levels[level - 1]
            if unit.kind == "prune":
                keep, size = setting.setting
                read, made = unit.touches[node]
                fewer_in += (size - keep) * read
                fewer_out += (size - keep) * made
            elif unit.kind == "lowrank":
                chain, factorized = setting.chain, setting.setting
            else:
                int8 = True
        fewer_in, fewer_out = min(fewer_in, spec.cin - 1), min(fewer_out, spec.cout - 1)
        pruned = resize(spec, fewer_in, fewer_out)
        if chain is not None and (fewer_in or fewer_out):
            chain = self._pruned_chain(node, *factorized, pruned.cin, pruned.cout)
        if chain is None:
            layers = [pruned]
        else:
            layers = chain
        return [layer.with_(int8=int8) for layer in layers]

    def _pruned_chain(self, node, method_name, rank, cin, cout) -> list[ConvSpec] | None:
        """The chain the factorization of a pruned layer builds; None when not cheaper.

        The driver would then leave the layer whole. The shapes only depend on the layer's.
        """
        key = (node, method_name, rank, cin, cout)
        if key not in self._chains:
            layer = self.layers[(node, method_name)]
            weight = placeholder(cout, cin, *layer.weight.shape[2:])
            bias = None if layer.bias is None else placeholder(cout)
            pruned = replace(layer, weight=weight, bias=bias)
            method = registry.get_pass(method_name)().method()  # its caches are per node
            chain = None
            try:
                steps = method.shapes(pruned, min(rank, method.full_rank(pruned)))
            except Unstable:
                steps = None
            if steps is not None and cheaper(pruned, steps):
                chain = self._chain_specs(self.specs[node].with_(cin=cin, cout=cout), steps)
            self._chains[key] = chain
        return self._chains[key]

    def cost(self, choice: dict[int, int]) -> float:
        """The objective of the priced layers under ``choice``, with measured corrections."""
        layers = sum(self.table.chain(self.node_layers(node, choice)) for node in self.specs)
        return layers + sum(
            self.units[i].levels[level - 1].correction for i, level in choice.items() if level
        )

    def correct(self, index: int, level: int, correction: float) -> None:
        """Add what the whole model measured to the price of unit ``index`` at ``level``."""
        entry = self.units[index].levels[level - 1]
        entry.correction = correction
        entry.delta += correction

    def step_cost(self, index: int, level: int, choice: dict[int, int]) -> float:
        """The objective's change when unit ``index`` goes to ``level`` from ``choice``."""
        after = {**choice, index: level}
        levels = self.units[index].levels
        now = choice.get(index, 0)
        change = levels[level - 1].correction - (levels[now - 1].correction if now else 0.0)
        for node in self.units[index].touches:
            change += self.table.chain(self.node_layers(node, after))
            change -= self.table.chain(self.node_layers(node, choice))
        return change

    # ------------------------------------------------------------------------ applying
    def apply(self, choice: dict[int, int], *, probe: bool = False) -> tuple[ir.Model, dict]:
        """A copy of the model with ``choice`` (unit index -> level, 1-based) applied.

        Returns the model and what was done. A ``probe`` (one level alone, for the
        sensitivity) skips the refit and takes the compensating means from one batch.
        """
        refit = self.refit and not probe
        batches = self.batches[:1] if probe and self.batches else self.batches
        model = clone_model(self.model)
        picked = {i: self.units[i].levels[level - 1] for i, level in choice.items() if level}
        done: dict[str, Any] = {}
        removals = {
            self.units[i].key: level.setting
            for i, level in picked.items()
            if self.units[i].kind == "prune"
        }
        if removals:
            groups, _ = ChannelGraph(model).groups()  # same groups, in order, as the original
            components = []
            for index, (keep, _) in removals.items():
                group = groups[index]
                order = self.orders[index][: group.size - keep]
                components.extend(group.components[int(j)] for j in order)
            done["prune"] = prune_components(
                model, components, batches=batches, refit=refit and batches is not None
            )
        factorize = {
            self.units[i].key: level.setting
            for i, level in picked.items()
            if self.units[i].kind == "lowrank"
        }
        chains: dict[str, list[str]] = {}
        if factorize:
            methods = {name: registry.get_pass(name)().method() for name, _ in factorize.values()}
            choices = {key: (methods[name], rank) for key, (name, rank) in factorize.items()}
            # measure=False: the search scores the whole model; per-layer output errors
            # would only cost two more runs of it.
            stats = factorize_layers(
                model, choices, self.fit, refit=refit, round_to=self.round_to, measure=False
            )
            done["lowrank"] = {"factorized": stats["factorized"]}
            chains = {key: entry.get("chain", [key]) for key, entry in stats["layers"].items()}
        int8 = {self.units[i].key for i, level in picked.items() if self.units[i].kind == "int8"}
        if int8:
            done["int8"] = self._quantize(model, int8, chains)
        return model, done

    def _quantize(self, model: ir.Model, names: set[str], chains: dict[str, list[str]]) -> dict:
        """Write int8 for the named layers, the chains they became, and ops between them."""
        wanted = set()
        for name in names:
            wanted.update(chains.get(name, [name]))
        plan = prepare_int8(model, self.fit)
        chosen = {n for n in plan.nodes if n.op_type in WEIGHTED and n.name in wanted}
        chosen |= between(plan.nodes, chosen) - set(plan.mixed_range_concats())
        stats = write_qdq(
            model, plan, chosen, reduce_range=False, bias_correct=True, context=self.fit
        )
        common_passes.ShapeInferencePass()(model)
        return {"int8_ops": len(stats["int8_ops"])}


def between(nodes: list[ir.Node], weighted: set[ir.Node]) -> set[ir.Node]:
    """Quantizable ops without weights next to a chosen weighted op, or to such an op.

    An Add or a pool between two int8 convolutions stays on integers.
    """
    candidates = {n for n in nodes if n.op_type not in WEIGHTED}
    neighbours: dict[ir.Node, set[ir.Node]] = {n: set() for n in candidates}
    pool = candidates | weighted
    for node in candidates:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer in pool:
                neighbours[node].add(producer)
        for out in node.outputs:
            for use in out.uses():
                if use.node in pool:
                    neighbours[node].add(use.node)
    reached = {n for n in candidates if neighbours[n] & weighted}
    frontier = list(reached)
    while frontier:
        node = frontier.pop()
        for other in neighbours[node]:
            if other in candidates and other not in reached:
                reached.add(other)
                frontier.append(other)
    return reached


def resize(spec: ConvSpec, fewer_in: int, fewer_out: int) -> ConvSpec | None:
    """``spec`` with fewer input and output channels; None when none would be left.

    A depthwise conv keeps one group per channel.
    """
    cin, cout = spec.cin - fewer_in, spec.cout - fewer_out
    if cin < 1 or cout < 1:
        return None
    group = cin if spec.group > 1 and spec.group == spec.cin else spec.group
    return spec.with_(cin=cin, cout=cout, group=group)


def pareto(levels: list[Level]) -> list[Level]:
    """Levels that save more than every cheaper-to-reach one, most objective first."""
    kept: list[Level] = []
    for level in sorted(levels, key=lambda lv: -lv.delta):
        if not kept or level.delta < kept[-1].delta:
            kept.append(level)
    return kept
