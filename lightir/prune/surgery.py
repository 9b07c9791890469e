"""Remove channel components from a model: the surgery behind ``prune``.

Works on the ``ir.Node`` / ``ir.Value`` objects the channel analysis found (never on names):
each component's weight slices are deleted, depthwise convs keep one group per channel, Split
sizes shrink with the channels of each piece, and unless ``compensate=False`` the removed
channels' mean contribution is folded into the consumers' biases. The mean comes from the
calibration batches when given, otherwise from the BatchNormalization statistics feeding the
channel (``E[act(gamma z + beta)]`` for ``z ~ N(0, 1)``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lightir.analysis.bn_stats import bn_output_means
from lightir.analysis.channels import Component
from lightir.analysis.reconstruct import refit_layers
from lightir.ir_util import clone_model
from lightir.onnx_bridge import Probe, row_parts, value_bytes
from lightir.rewrite import add_after, add_initializer

MEANS_BYTES = 128 << 20  # values held at once by channel_means


@dataclass
class Removal:
    """What :func:`remove_components` did.

    The consumers it touched, in graph order, and for each the original output channels it
    keeps (fewer when the consumer's own weight rows went too).
    """

    consumers: list[ir.Node] = field(default_factory=list)
    kept_outputs: dict[ir.Node, np.ndarray] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: {"channels_removed": 0})


def remove_components(
    model: ir.Model,
    components: list[Component],
    *,
    compensate: bool = True,
    batches: list[dict] | None = None,
) -> Removal:
    """Remove ``components`` (found on ``model``) from ``model`` in place."""
    if not components:
        return Removal()
    touched = {n for c in components for n, _ in c.consumers}
    consumers = [n for n in model.graph if n in touched]
    increments = _mean_contributions(model, components, batches) if compensate else {}
    deletions: dict[tuple[int, int], tuple[ir.Value, int, set[int]]] = {}
    for component in components:
        for s in component.slices:
            deletions.setdefault((id(s.value), s.axis), (s.value, s.axis, set()))[2].add(s.index)
    outputs = {node: _output_count(node) for node in consumers}
    multipliers = {
        node: node.inputs[1].const_value.shape[0] // node.attributes.get_int("group", 1)
        for node in model.graph
        if node.op_type == "Conv" and node.attributes.get_int("group", 1) > 1
    }
    removed_rows = {node: _removed_outputs(node, deletions) for node in consumers}
    for value, axis, indices in deletions.values():
        kept = np.delete(value.const_value.numpy(), sorted(indices), axis=axis)
        value.const_value = ir.tensor(np.ascontiguousarray(kept), name=value.name)
        value.shape = ir.Shape(kept.shape)
    for node, multiplier in multipliers.items():  # depthwise convs keep one group per channel
        groups = node.inputs[1].const_value.shape[0] // multiplier
        node.attributes["group"] = ir.AttrInt64("group", groups)
    increments = {node: np.delete(delta, removed_rows[node]) for node, delta in increments.items()}
    kept_outputs = {
        node: np.delete(np.arange(outputs[node]), removed_rows[node]) for node in consumers
    }
    _update_split_sizes(model, components)
    _fold_compensation(increments)
    _refresh_shapes(model)
    stats = {
        "channels_removed": len(components),
        "layers_touched": len(consumers),
        "compensated_layers": len(increments),
    }
    return Removal(consumers, kept_outputs, stats)


def prune_components(
    model: ir.Model,
    components: list[Component],
    *,
    compensate: bool = True,
    batches: list[dict] | None = None,
    refit: bool = False,
) -> dict:
    """Remove ``components`` and repair the consumers; returns the stats for the report.

    The removed channels' mean goes into the consumers' biases (``compensate``); with
    ``refit`` (needs ``batches``) each consumer is then refit by least squares to the
    unpruned model's output of that layer.
    """
    original = clone_model(model) if refit and components and batches else None
    twins = dict(zip(model.graph, original.graph)) if original is not None else {}
    removal = remove_components(model, components, compensate=compensate, batches=batches)
    stats = dict(removal.stats)
    if original is not None:
        pairs = [(node, twins[node]) for node in removal.consumers]
        stats["refit_layers"] = len(
            refit_layers(original, model, pairs, batches, removal.kept_outputs)
        )
    return stats


def _output_count(node: ir.Node) -> int:
    shape = node.inputs[1].const_value.shape.numpy()
    transposed = node.op_type == "MatMul" or (
        node.op_type == "Gemm" and not node.attributes.get_int("transB", 0)
    )
    return int(shape[1] if transposed else shape[0])


def _removed_outputs(node: ir.Node, deletions) -> list[int]:
    """Output channels of ``node`` removed by ``deletions`` (its own weight rows)."""
    axis = (
        1
        if node.op_type == "MatMul"
        or (node.op_type == "Gemm" and not node.attributes.get_int("transB", 0))
        else 0
    )
    entry = deletions.get((id(node.inputs[1]), axis))
    return sorted(entry[2]) if entry else []


def _mean_contributions(
    model: ir.Model, removed: list[Component], batches: list[dict] | None
) -> dict[ir.Node, np.ndarray]:
    """Per consumer node: bias increment from the removed channels' mean values."""
    increments: dict[ir.Node, np.ndarray] = {}
    for component, mean in zip(removed, _channel_means(model, removed, batches)):
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
            increments[node] = increments.get(node, 0) + column * mean
    return increments


def _channel_means(
    model: ir.Model, removed: list[Component], batches: list[dict] | None
) -> list[float | None]:
    """Mean value of each removed channel as its consumers see it."""
    if batches is None:
        return [_bn_mean(component) for component in removed]
    names = sorted(
        {
            name
            for c in removed
            for name, _ in c.channels
            if any(n.inputs[0].name == name for n, _ in c.consumers)
        }
    )
    values = channel_means(model, names, batches) if names else {}
    result = []
    for component in removed:
        seen = [values[name][ch] for name, ch in component.channels if name in values]
        result.append(float(np.mean(seen)) if seen else None)
    return result


def channel_means(model: ir.Model, names: list[str], batches: list[dict]) -> dict[str, np.ndarray]:
    """Per value in ``names``, the mean of each channel (axis 1) over the samples and positions.

    Streamed a few rows at a time, keeping only per-channel sums: ``prune{ratio=0.75}`` on
    ResNet-50 reads the input of nearly every layer, 1 GB for 24 samples if held at once.
    """
    by_name = {v.name: v for n in model.graph for v in n.outputs}
    by_name.update({v.name: v for v in model.graph.inputs})
    row_bytes = sum(value_bytes(by_name[name]) for name in names if name in by_name)
    probe = Probe(model, names)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)
    for part in row_parts(batches, row_bytes, MEANS_BYTES):
        for name, array in probe.run(part).items():
            axes = tuple(i for i in range(array.ndim) if i != 1)
            total = array.sum(axis=axes, dtype=np.float64)
            sums[name] = sums[name] + total if name in sums else total
            counts[name] += array.size // max(array.shape[1], 1)
    return {name: sums[name] / max(counts[name], 1) for name in sums}


def _bn_mean(component: Component) -> float | None:
    """``E[act(gamma z + beta)]`` from the BN feeding the consumers, ``z ~ N(0, 1)``."""
    for node, _ in component.consumers:
        found = bn_output_means(node.inputs[0])
        if found is None:
            return None
        bn, means = found
        channel = next(ch for name, ch in component.channels if name == bn.outputs[0].name)
        return float(means[channel])
    return None


def _fold_compensation(increments: dict[ir.Node, np.ndarray]) -> None:
    """Add each consumer's bias increment (creating the bias input if it has none)."""
    for node, increment in increments.items():
        delta = np.asarray(increment, np.float64)
        if node.op_type == "Gemm":
            # C is scaled by beta; keep beta and divide the increment by it.
            delta = delta / node.attributes.get_float("beta", 1.0)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias_value = node.inputs[2]
            bias = bias_value.const_value.numpy()
            new = bias.astype(np.float64) + np.broadcast_to(delta, bias.shape[-1:])
            bias_value.const_value = ir.tensor(new.astype(bias.dtype), name=bias_value.name)
            continue
        dtype = node.inputs[1].const_value.numpy().dtype
        base = f"{node.name or node.op_type.lower()}_pruned_bias"
        value = add_initializer(node.graph, base, delta.astype(dtype))
        if node.op_type == "MatMul":  # no bias input: the increment is added after it
            add_after(node, value, base)
            continue
        node.resize_inputs(3)
        node.replace_input_with(2, value)


def _update_split_sizes(model: ir.Model, removed: list[Component]) -> None:
    """Split on axis 1 with explicit sizes: subtract the channels removed per output.

    Sizes are an input from opset 13 and the ``split`` attribute before. A sizes tensor
    that other nodes share (exporters and simplifiers deduplicate ``[c, c]``) is not
    edited in place: the Split gets a tensor of its own.
    """
    removed_per_value: dict[str, int] = defaultdict(int)
    for component in removed:
        for name, _ in component.channels:
            removed_per_value[name] += 1
    for node in model.graph:
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
            node.replace_input_with(1, add_initializer(node.graph, f"{node.name}_split_sizes", new))


def _refresh_shapes(model: ir.Model) -> None:
    graph = model.graph
    keep = set(graph.inputs) | set(graph.outputs)
    for node in graph:
        for out in node.outputs:
            if out not in keep:
                out.shape = None
    common_passes.ShapeInferencePass()(model)
