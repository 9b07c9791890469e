"""The driver shared by the low-rank passes (svd, spatial-svd, tucker, cp).

:mod:`.factor` does the arithmetic; this module decides and rewrites.

Eligibility, rank policies, rewriting a layer into its chain, the whole-model MAC budget,
and the data-driven refit.

Rank policies (options of every low-rank pass; exactly one is used, in this order):

* ``rank=N``: that rank (capped by the layer's full rank);
* ``ratio=R``: the largest rank whose factorized layer has at most R of the layer's params
  (``ratio-of=macs``: of its MACs);
* ``energy=E``: the smallest rank keeping E of the squared singular values (per mode for
  Tucker; ``1 - error^2`` for CP);
* ``tol=T`` (needs ``--calib``): the smallest rank whose layer output, on the calibration
  inputs of that layer, has relative error at most T;
* ``target-macs=R``: ranks for all layers so that the model's MACs are at most R of the
  original, taken greedily by least added weight error per MAC saved.

Ranks are rounded to multiples of ``round`` (8), and a layer is never factorized when its
chain would not be cheaper in both MACs and params; ``--explain`` says why. With ``refit=true``
and ``--calib``, the last layer of every chain is refit by least squares. Its inputs are the
factorized model's, its target the original model's output of that layer, so errors do not
accumulate from layer to layer (the asymmetric reconstruction of Zhang et al.). With
``refit-act=true``, a layer whose only consumer is a ReLU or Clip is fit through it: outputs
the activation zeroes only need to stay non-positive
(:func:`lightir.analysis.reconstruct.ridge_solve`).
It is off by default: on the digits fixture it lowers every layer's post-activation error on
held-out images, yet top-1 accuracy drops (tools/README.md, low-rank section).

With ``--calib``, the report gives every factorized layer's relative output error on the
calibration inputs (``output_error``, measured in the final model, so upstream error counts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lightir import progress
from lightir.analysis.budget import allocate
from lightir.analysis.reconstruct import conv_patches, refit_layers
from lightir.errors import UsageError
from lightir.ir_util import clone_model
from lightir.lowrank.factor import ConvStep, Factorization, Unstable, chain_macs, chain_params
from lightir.onnx_bridge import Probe, capture, row_parts, value_bytes
from lightir.pass_base import Pass, PassContext, PassResult, Strength
from lightir.rewrite import add_initializer, unique_name, unique_node_name

logger = logging.getLogger(__name__)

OUTPUT_BYTES = 128 << 20  # layer outputs of both models held at once by _output_errors


@dataclass(frozen=True)
class LowRankOptions:
    """Rank policy and refit options (see module docstring)."""

    rank: int = 0
    ratio: float = 0.0
    # 0 means "not given": the energy policy is the fallback, at 0.9 (--list-passes says so).
    energy: float = field(
        default=0.0, metadata={"shown": "0.9 unless rank, ratio, tol or target-macs is given"}
    )
    tol: float = 0.0
    target_macs: float = 0.0
    round: int = 8
    refit: bool = False
    refit_act: bool = False
    ratio_of: str = "params"

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1 or not 0 <= self.energy <= 1 or not 0 <= self.target_macs <= 1:
            raise ValueError("ratio, energy and target-macs are fractions in [0, 1]")
        if self.ratio_of not in ("params", "macs"):
            raise ValueError(f"ratio-of is 'params' or 'macs', got {self.ratio_of!r}")
        if self.round < 1:
            raise ValueError(f"round must be >= 1, got {self.round}")
        if self.refit_act and not self.refit:
            raise ValueError("refit-act=true changes how the refit fits: give refit=true too")


@dataclass
class Layer:
    """A layer a low-rank method can factorize."""

    node: ir.Node
    weight: np.ndarray  # as a conv weight (C_out, C_in, kh, kw); dense layers as 1x1
    bias: np.ndarray | None
    geometry: dict  # strides, pads, dilations
    height: int
    width: int
    dense: bool  # Gemm / MatMul (rewritten with MatMul, not Conv)

    @property
    def macs(self) -> int:
        """MACs of the layer on its input size."""
        return chain_macs([self.as_step()], self.height, self.width)

    @property
    def params(self) -> int:
        """Weights and bias of the layer."""
        return self.weight.size + (0 if self.bias is None else self.bias.size)

    def as_step(self) -> ConvStep:
        """The layer as a single conv step."""
        return ConvStep(
            self.weight,
            1,
            self.geometry["strides"],
            self.geometry["pads"],
            self.geometry["dilations"],
            self.bias,
        )


def placeholder(*shape: int) -> np.ndarray:
    """A read-only float32 array of ``shape`` that takes no memory (for :meth:`shapes`)."""
    return np.broadcast_to(np.float32(0), shape)


def conv_layer(node: ir.Node) -> Layer | None:
    """A group-1 Conv with a constant weight of its own and a known input size."""
    if node.op_type != "Conv" or node.attributes.get_int("group", 1) != 1:
        return None
    value = node.inputs[1]
    if value.const_value is None or value.is_graph_input():
        return None
    if any(user is not node for user, _ in value.uses()) or value.const_value.shape.rank() != 4:
        return None
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        if node.inputs[2].const_value is None:
            return None
        bias = node.inputs[2].const_value.numpy()
    shape = node.inputs[0].shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in list(shape)[2:]):
        return None
    geometry = {
        "strides": tuple(node.attributes.get_ints("strides", [1, 1])),
        "pads": tuple(node.attributes.get_ints("pads", [0, 0, 0, 0])),
        "dilations": tuple(node.attributes.get_ints("dilations", [1, 1])),
    }
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    return Layer(node, value.const_value.numpy(), bias, geometry, shape[2], shape[3], False)


def spatial_conv_layer(node: ir.Node) -> Layer | None:
    """A :func:`conv_layer` with a kernel of at least 2x2 and no dilation (spatial methods)."""
    layer = conv_layer(node)
    if layer is None or min(layer.weight.shape[2:]) < 2 or layer.geometry["dilations"] != (1, 1):
        return None
    return layer


def dense_layer(node: ir.Node) -> Layer | None:
    """Gemm (transA=0) or 2-D-weight MatMul as a 1x1 'conv' (C_out, C_in, 1, 1)."""
    if node.op_type not in ("Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    value = node.inputs[1]
    if value.const_value is None or value.is_graph_input() or len(value.const_value.shape) != 2:
        return None
    if any(user is not node for user, _ in value.uses()):
        return None
    w = value.const_value.numpy().astype(np.float64)
    bias = None
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            return None
        matrix = w if node.attributes.get_int("transB", 0) else w.T
        matrix = matrix * node.attributes.get_float("alpha", 1.0)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = node.inputs[2].const_value
            if c is None or c.size != matrix.shape[0]:
                return None
            bias = c.numpy().reshape(-1) * node.attributes.get_float("beta", 1.0)
    else:
        x = node.inputs[0]
        if x.shape is None or len(x.shape) != 2:
            return None
        matrix = w.T
    geometry = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1)}
    return Layer(node, matrix[:, :, None, None], bias, geometry, 1, 1, True)


class LowRankMethod:
    """What a low-rank pass defines: eligibility, full rank, and the chain for a rank."""

    name = ""

    def layer(self, node: ir.Node) -> Layer | None:
        """The layer this method can factorize at ``node``, or None."""
        raise NotImplementedError

    def full_rank(self, layer: Layer) -> int:
        """The rank at which the factorization is exact."""
        raise NotImplementedError

    def factorize(self, layer: Layer, rank: int) -> Factorization:
        """The chain for ``rank`` (:meth:`Factorization.dense`: the approximated weight)."""
        raise NotImplementedError

    def decomposition(self, layer: Layer, matrix: np.ndarray) -> tuple:
        """``np.linalg.svd(matrix)``, computed once per layer weight.

        A budget search tries dozens of ranks of one weight, and one SVD serves them all.
        """
        cache = self.__dict__.setdefault("_decompositions", {})
        key = id(layer.weight)
        if key not in cache:  # the entry holds the weight, so its id is not reused
            cache[key] = (
                layer.weight,
                np.linalg.svd(matrix.astype(np.float64), full_matrices=False),
            )
        return cache[key][1]

    def forget(self) -> None:
        """Drop the cached decompositions and the weights they hold.

        Float64 factors of every layer tried: ``factorize_layers`` on ResNet-50 at
        ``svd{energy=0.5}`` held 145 MB of them, all layers' at once, through the refit.
        """
        self.__dict__.pop("_decompositions", None)
        self.__dict__.pop("_spectra", None)

    def singular_values(self, layer: Layer, matrix: np.ndarray, mode: str = "") -> np.ndarray:
        """Singular values of ``matrix`` (float64), computed once per layer weight and ``mode``.

        What :meth:`energy_rank` reads: one SVD without its vectors serves every energy,
        and :meth:`decomposition`'s are reused where it ran first.
        """
        key = (id(layer.weight), mode)
        cache = self.__dict__.setdefault("_spectra", {})
        if key not in cache:  # the entry holds the weight, so its id is not reused
            done = self.__dict__.get("_decompositions", {}).get(id(layer.weight))
            if done is not None and not mode:
                values = done[1][1]
            else:
                values = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
            cache[key] = (layer.weight, values)
        return cache[key][1]

    def shapes(self, layer: Layer, rank: int) -> list[ConvStep]:
        """The chain's steps at ``rank`` as pricing reads them (shapes and geometry).

        By default :meth:`estimate`'s steps; methods whose steps' shapes follow from the rank
        alone return placeholder weights (no memory) and skip the fit.
        """
        return self.estimate(layer, rank).steps

    def budget_ranks(self, grid: list[int]) -> list[int]:
        """Ranks the whole-model budget tries (all of the grid by default)."""
        return grid

    def estimate(self, layer: Layer, rank: int) -> Factorization:
        """What the whole-model budget compares; a cheaper fit where the method has one.

        The ranks it picks are then fitted with :meth:`factorize`.
        """
        return self.factorize(layer, rank)

    def energy_rank(self, layer: Layer, energy: float) -> int:
        """Smallest rank keeping ``energy``; by default from the factorization errors."""
        full = self.full_rank(layer)
        for rank in range(1, full + 1):
            if self.factorize(layer, rank).error ** 2 <= 1 - energy:
                return rank
        return full


class LowRankPass(Pass):
    """Base of the low-rank passes: the context check and the run; subclasses give ``method``."""

    Options = LowRankOptions
    # Without a rank policy, the smallest energy that meets the budget (0.9 was the default).
    strength = Strength(
        "energy", (0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99), ("rank", "ratio", "tol", "target_macs")
    )

    def method(self) -> LowRankMethod:
        """The factorization this pass applies."""
        raise NotImplementedError

    def requires(self, model: ir.Model, context: PassContext) -> None:
        """``tol`` and ``refit`` need ``--calib``."""
        if context.calibration is None and (self.options.tol or self.options.refit):
            option = "tol" if self.options.tol else "refit=true"
            raise UsageError(f"{self.name}{{{option}}} needs calibration data: pass --calib")

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Factorize every eligible layer per the rank policy."""
        return run_lowrank(self.method(), model, self.options, context)


def run_lowrank(
    method: LowRankMethod, model: ir.Model, options: LowRankOptions, context: PassContext
) -> PassResult:
    """Choose ranks, rewrite the layers, refit when asked; report per-layer figures."""
    common_passes.ShapeInferencePass()(model)
    original = clone_model(model) if context.calibration is not None else None
    layers = []
    for node in list(model.graph):
        layer = method.layer(node)
        if layer is None:
            continue
        if not np.isfinite(layer.weight).all():  # LAPACK does not return on NaN / Inf
            context.decline(node, "weight has NaN or Inf values")
            continue
        layers.append(layer)
    batches = (
        list(context.calibration.batches(batch_size=16, limit=64))
        if context.calibration is not None
        else None
    )
    if options.target_macs:
        chosen = _budget(method, model, layers, options, context)
    else:
        chosen = {}
        for layer in progress.bar(layers, desc=f"{method.name}: choosing ranks"):
            factorization = _choose(method, layer, options, context, model, batches)
            if factorization is not None:
                chosen[layer.node.name] = (layer, factorization)
    stats = _apply(model, chosen, original, batches, options.refit, options.refit_act)
    return PassResult(model, modified=bool(chosen), stats=stats)


def _apply(
    model, chosen: dict, original, batches, refit: bool, refit_act: bool, measure: bool = True
) -> dict:
    """Rewrite the ``chosen`` layers (name -> (layer, factorization)), refit, measure."""
    twins = dict(zip(model.graph, original.graph)) if original is not None else {}
    report = {}
    names: dict[ir.Node, str] = {}  # the last node of each chain -> the layer's name
    pairs = []  # (the last node of each chain, the layer in the original model)
    for name, (layer, factorization) in chosen.items():
        chain = _rewrite(layer, factorization, model)
        last = chain[-1]
        names[last] = name
        if original is not None:
            pairs.append((last, twins[layer.node]))
        report[name] = {
            "rank": factorization.rank,
            "weight_error": round(factorization.error, 5),
            "macs_ratio": round(
                chain_macs(factorization.steps, layer.height, layer.width) / layer.macs, 4
            ),
            "params_ratio": round(chain_params(factorization.steps) / layer.params, 4),
            "chain": [node.name for node in chain],
        }
    if chosen:
        common_passes.RemoveUnusedNodesPass()(model)
        common_passes.ShapeInferencePass()(model)
        # A layer whose output nothing reads went with its chain: nothing to refit or measure.
        pairs = [(last, twin) for last, twin in pairs if last.graph is model.graph]
    stats = {"factorized": len(chosen), "layers": report}
    if refit and chosen:
        fits = refit_layers(original, model, pairs, batches, through_act=refit_act)
        for node, how in fits.items():
            report[names[node]]["refit"] = how
        stats["refit_layers"] = len(fits)
    if batches and chosen and measure:
        for node, error in _output_errors(original, model, pairs, batches).items():
            report[names[node]]["output_error"] = round(error, 5)
    return stats


def factorize_layers(
    model: ir.Model,
    choices: dict[str, tuple[LowRankMethod, float]],
    context: PassContext,
    *,
    refit: bool = False,
    round_to: int = 8,
    measure: bool = True,
) -> dict:
    """Factorize the named layers, each by its method at its rank; the stats for the report.

    ``choices`` maps a node name to ``(method, rank)``; the rank is capped by the layer's
    full rank as it is now (pruning may have left it fewer channels than when the choice was
    made). Layers it cannot make cheaper are declined.
    ``measure``: report each layer's output error on the calibration data (a model run).
    """
    common_passes.ShapeInferencePass()(model)
    batches = (
        list(context.calibration.batches(batch_size=16, limit=64))
        if context.calibration is not None
        else None
    )
    original = clone_model(model) if batches else None
    chosen = {}
    for node in list(model.graph):
        if node.name not in choices:
            continue
        method, rank = choices[node.name]
        layer = method.layer(node)
        if layer is None or not np.isfinite(layer.weight).all():
            context.decline(node, f"{method.name}: not factorizable")
            continue
        factorization = _choose(
            method, layer, LowRankOptions(rank=rank, round=round_to), context, model, batches
        )
        method.forget()  # each layer is factorized once: its decomposition is done with
        if factorization is not None:
            chosen[node.name] = (layer, factorization)
    return _apply(model, chosen, original, batches, refit and bool(batches), False, measure=measure)


def _output_errors(original, model, pairs, batches) -> dict[ir.Node, float]:
    """Relative L2 error of each layer's output, factorized model vs original.

    Streamed: both models run on a few rows at a time and only the sums of squares are kept,
    so every factorized layer's output is never held for every sample at once (ResNet-50 at
    svd{energy=0.5}, 24 samples: 2.6 GB when captured whole).
    """
    before = Probe(original, [twin.outputs[0].name for _, twin in pairs])
    after = Probe(model, [node.outputs[0].name for node, _ in pairs])
    row_bytes = sum(value_bytes(twin.outputs[0]) for _, twin in pairs)
    errors = {node: 0.0 for node, _ in pairs}
    norms = {node: 0.0 for node, _ in pairs}
    for part in row_parts(batches, 2 * row_bytes, OUTPUT_BYTES):
        got, want = after.run(part), before.run(part)
        for node, twin in pairs:
            a = got[node.outputs[0].name].astype(np.float64)
            b = want[twin.outputs[0].name].astype(np.float64)
            errors[node] += float(np.sum((a - b) ** 2))
            norms[node] += float(np.sum(b**2))
        del got, want
    return {node: float(np.sqrt(errors[node]) / (np.sqrt(norms[node]) or 1.0)) for node in errors}


def _grid(method: LowRankMethod, layer: Layer, step: int) -> list[int]:
    full = method.full_rank(layer)
    grid = list(range(step, full, step)) if full > step else list(range(1, full))
    return [r for r in grid if r >= 1]


def energy_rank(method: LowRankMethod, layer: Layer, energy: float, step: int) -> int:
    """The rank ``method{energy=E,round=step}`` gives ``layer``.

    The smallest rank keeping ``energy`` of the weight's energy, rounded up to a multiple of
    ``step`` below full rank (unrounded where no such multiple is left). May raise
    :class:`Unstable`.
    """
    rank = method.energy_rank(layer, energy)
    rounded = [r for r in _grid(method, layer, step) if r >= rank]
    return rounded[0] if rounded else rank


def cheaper(layer: Layer, steps: list[ConvStep]) -> bool:
    """Whether a chain costs fewer MACs and fewer params than the layer (else not taken)."""
    return (
        chain_macs(steps, layer.height, layer.width) < layer.macs
        and chain_params(steps) < layer.params
    )


def _choose(method, layer, options, context, model, batches) -> Factorization | None:
    node = layer.node
    grid = _grid(method, layer, options.round)
    try:
        if options.rank:
            rank = min(options.rank, method.full_rank(layer))
            candidates = [rank]
        elif options.ratio:
            candidates = [
                r for r in reversed(grid) if _ratio(method.factorize(layer, r), layer, options)
            ][:1]
        elif options.tol:
            candidates = [_tol_rank(method, layer, grid, options.tol, model, batches)]
        else:
            candidates = [energy_rank(method, layer, options.energy or 0.9, options.round)]
        candidates = [c for c in candidates if c]
        if not candidates:
            context.decline(node, "no rank meets the policy")
            return None
        factorization = method.factorize(layer, candidates[0])
    except Unstable as reason:
        context.decline(node, f"{method.name}: {reason}")
        return None
    if not cheaper(layer, factorization.steps):
        context.decline(
            node,
            f"rank {factorization.rank} is not cheaper "
            f"({chain_macs(factorization.steps, layer.height, layer.width)} vs {layer.macs} MACs, "
            f"{chain_params(factorization.steps)} vs {layer.params} params)",
        )
        return None
    return factorization


def _ratio(factorization: Factorization, layer: Layer, options: LowRankOptions) -> bool:
    if options.ratio_of == "macs":
        cost = chain_macs(factorization.steps, layer.height, layer.width) / layer.macs
    else:
        cost = chain_params(factorization.steps) / layer.params
    return cost <= options.ratio


def _tol_rank(method, layer, grid, tol, model, batches) -> int | None:
    x = capture(model, [layer.node.inputs[0].name], batches)[layer.node.inputs[0].name]
    if layer.dense:
        patches = x.reshape(x.shape[0], -1)
    else:
        patches, _ = conv_patches(x, layer.node)
    reference = patches @ layer.weight.reshape(layer.weight.shape[0], -1).T
    scale = np.linalg.norm(reference) or 1.0
    for rank in grid:
        approx = method.factorize(layer, rank).dense()
        error = np.linalg.norm(patches @ approx.reshape(approx.shape[0], -1).T - reference)
        if error / scale <= tol:
            return rank
    return None


def _budget(method, model, layers, options, context) -> dict:
    """Ranks for ``target-macs``: least weight error added per MAC saved (shared allocator)."""
    from lightir.analysis.cost import model_cost
    from lightir.data import concrete_shape, input_specs

    specs = input_specs(model)
    total = model_cost(model, {s.name: concrete_shape(s, 1, {}) for s in specs}).macs
    target = options.target_macs * total
    curves = {}
    for layer in progress.bar(layers, desc=f"{method.name}: rank curves"):
        points = []
        for rank in reversed(method.budget_ranks(_grid(method, layer, options.round))):
            try:
                factorization = method.estimate(layer, rank)
            except Unstable as reason:
                context.decline(layer.node, f"{method.name}: {reason}")
                break
            if cheaper(layer, factorization.steps):
                points.append(factorization)
        if points:
            curves[layer.node.name] = (layer, points)

    def propose(name: str, levels: dict, current: float) -> tuple[float, float] | None:
        layer, points = curves[name]
        index = levels[name] - 1  # into points; -1 = not factorized
        if index + 1 >= len(points):
            return None
        height, width = layer.height, layer.width
        before_macs = layer.macs if index < 0 else chain_macs(points[index].steps, height, width)
        before_error = 0.0 if index < 0 else points[index].error
        nxt = points[index + 1]
        saved = before_macs - chain_macs(nxt.steps, height, width)
        if saved <= 0:
            return None
        return (nxt.error**2 - before_error**2) / saved, current - saved

    levels, met = allocate(curves, total, target, propose)
    if not met:
        context.decline("target-macs", f"cannot reach {options.target_macs:g}")
    state = {name: level - 1 for name, level in levels.items()}
    chosen = {}
    for name, index in state.items():
        if index < 0:
            continue
        layer, estimate = curves[name][0], curves[name][1][index]
        try:
            chosen[name] = (layer, method.factorize(layer, estimate.rank))
        except Unstable as reason:  # the full fit can diverge where the estimate did not
            context.decline(layer.node, f"{method.name}: {reason}")
    return chosen


def _rewrite(layer: Layer, factorization: Factorization, model: ir.Model) -> list[ir.Node]:
    """Replace the layer's node by its chain; returns the chain's nodes.

    The last node keeps the layer's name and output name.
    """
    node, graph = layer.node, layer.node.graph
    dtype = node.inputs[1].const_value.numpy().dtype
    value = node.inputs[0]
    new_nodes = []
    for index, step in enumerate(factorization.steps):
        last = index == len(factorization.steps) - 1
        base = f"{node.name}_{method_tag(factorization)}{index}"
        w_name = unique_name(graph, f"{base}_weight")
        if layer.dense:
            matrix = step.weight[:, :, 0, 0].T.astype(dtype)  # (in, out)
            inputs = [value, add_initializer(graph, w_name, matrix)]
            if last and layer.bias is not None:
                inputs.append(add_initializer(graph, f"{base}_bias", layer.bias.astype(dtype)))
                new = ir.node("Gemm", inputs, name=unique_node_name(graph, base))
            else:
                new = ir.node("MatMul", inputs, name=unique_node_name(graph, base))
        else:
            inputs = [value, add_initializer(graph, w_name, step.weight.astype(dtype))]
            if step.bias is not None:
                inputs.append(add_initializer(graph, f"{base}_bias", step.bias.astype(dtype)))
            new = ir.node(
                "Conv",
                inputs,
                {
                    "kernel_shape": list(step.weight.shape[2:]),
                    "strides": list(step.strides),
                    "pads": list(step.pads),
                    "dilations": list(step.dilations),
                    "group": step.group,
                },
                name=unique_node_name(graph, base),
            )
        new.outputs[0].name = unique_name(graph, f"{base}_out")
        new_nodes.append(new)
        value = new.outputs[0]
    graph.insert_before(node, new_nodes)
    old_out, old_name = node.outputs[0], node.outputs[0].name
    old_out.replace_all_uses_with(value, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    # The last node takes the original's name and output name (refit and reports use them).
    new_nodes[-1].name = node.name
    value.name = old_name
    return new_nodes


def method_tag(factorization: Factorization) -> str:
    """Short tag of the method in generated names."""
    return factorization.extra.get("tag", "f")
