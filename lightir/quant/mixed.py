"""Automatic mixed precision for ``int8``: the fewest ops to keep in float32.

The all-int8 model is scored against fp32 on the calibration batches the pass may fit on:
the verifier's agreement (:attr:`lightir.verify.OutputMetrics.agreement`: cosine, top-1 along
the Softmax axis for probabilities, both for sequence logits) against ``auto-cosine``, and for
probability maps (Sigmoid heads, per-position Softmax) their soft IoU
(:func:`lightir.verify.soft_iou`) against ``auto-iou``: a DB text detector's map keeps cosine
0.99 while its mask IoU falls to 0.94. A result's *deficit* is the worst
``(1 - score) / (1 - target)`` over outputs and criteria; it meets the targets at <= 1.

When all-int8 misses, every candidate op's sensitivity (the deficit when it alone is int8, on
two samples) is measured, and the ops are ranked by sensitivity per MAC (sensitivity alone
when that ranking cannot meet the targets). The smallest ``k`` of the ranking kept float that
meets the targets on half of the samples is found by doubling, then bisection, and raised the
same way until the other half meets them too (at most half of the ops are kept float).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from lightir.analysis.cost import inferred_shapes, node_macs
from lightir.data import input_specs, synthesize
from lightir.ir_util import clone_model
from lightir.onnx_bridge import OrtModel
from lightir.verify import compare_outputs, output_scales


def keep_float(
    model: ir.Model,
    candidates: list[ir.Node],
    write: Callable[[ir.Model, set[ir.Node]], None],
    calibration,
    targets: tuple[float, float],
) -> set[ir.Node]:
    """The ``candidates`` to keep in float32 so that the model meets ``targets``.

    ``write(trial, nodes)`` quantizes ``nodes`` of ``trial``, a copy of ``model``;
    ``targets`` are ``(auto-cosine, auto-iou)``.
    """
    if calibration is not None:
        batches = list(calibration.batches(batch_size=8, limit=16))
    else:
        batches = [synthesize(input_specs(model), samples=8, seed=7)[0]]
    scales = output_scales(model)
    reference = OrtModel(model).run_all(batches)

    def deficit(quantized: set[ir.Node], runs=batches, ref=reference) -> float:
        trial = clone_model(model)
        twin = dict(zip(model.graph, trial.graph))
        write(trial, {twin[n] for n in quantized})
        worst = 0.0
        for m in compare_outputs(ref, OrtModel(trial).run_all(runs), scales):
            for score, target in zip((m.agreement, m.soft_iou), targets):
                if score is not None:
                    worst = max(worst, (1.0 - score) / max(1.0 - target, 1e-12))
        return worst

    everything = set(candidates)
    if deficit(everything) <= 1.0:
        return set()
    # Ranking needs an order, not a precise figure: two samples suffice.
    # A model with a fixed batch dim takes whole batches only.
    fixed = not all(spec.dynamic_batch for spec in input_specs(model))
    one = batches[:1] if fixed else [{k: v[:2] for k, v in batches[0].items()}]
    one_reference = OrtModel(model).run_all(one)
    loss = {n: deficit({n}, one, one_reference) for n in candidates}
    limit = max(1, len(candidates) // 2)
    # The count is chosen on one half of the samples and confirmed on the other: the
    # smallest count that meets the targets on the samples it was chosen on sits at the
    # edge, and verification runs on samples the pass never saw (PP-OCRv6 tiny rec: kept
    # at top-1 0.99 on its own samples, 0.925 on the held-out ones, rolled back).
    fit, confirm = (batches[::2], batches[1::2]) if fixed else _halves(batches)
    fit_reference = OrtModel(model).run_all(fit)
    confirm_reference = OrtModel(model).run_all(confirm) if confirm else []

    def search(ranked: list[ir.Node]) -> int | None:
        """The fewest of ``ranked`` to keep float, or None if ``limit`` is not enough."""

        def meets(count: int, runs=fit, ref=fit_reference) -> bool:
            return deficit(everything - set(ranked[:count]), runs, ref) <= 1.0

        def both(count: int) -> bool:
            return meets(count) and (not confirm or meets(count, confirm, confirm_reference))

        count = _smallest(meets, 0, limit)
        if count is not None and not both(count):
            count = _smallest(both, count, limit)
        return count

    # Sensitivity per unit of work first: keeping a conv with 6% of the MACs float costs
    # more speed than keeping an Add float. Sensitivity alone when that cannot meet the
    # targets.
    costs = op_costs(model, candidates, batches[0])
    by_value = sorted(candidates, key=lambda n: loss[n] / costs[n], reverse=True)
    by_loss = sorted(candidates, key=loss.get, reverse=True)
    for ranked in (by_value, by_loss):
        count = search(ranked)
        if count is not None:
            return set(ranked[:count])
    return set(by_loss[:limit])


def op_costs(model: ir.Model, nodes: list[ir.Node], batch: dict) -> dict[ir.Node, float]:
    """Work of each node for one sample of ``batch``.

    MACs, or output elements when the op multiplies nothing (Add, pools, Concat); 1 where
    shapes cannot be inferred.
    """
    try:
        shapes = inferred_shapes(model, {k: (1, *np.shape(v)[1:]) for k, v in batch.items()})
    except Exception:  # noqa: BLE001 - a ranking aid: sensitivity alone still works
        shapes = {}
    costs = {}
    for node in nodes:
        out = shapes.get(node.outputs[0].name)
        static = out and all(isinstance(d, int) for d in out)
        elements = float(np.prod(out)) if static else 1.0
        costs[node] = max(float(node_macs(node, shapes)) if shapes else 0.0, elements, 1.0)
    return costs


def _smallest(ok, low: int, limit: int) -> int | None:
    """The smallest count in (low, limit] with ``ok(count)``, or None if ``ok(limit)`` fails.

    Doubling, then bisection; ``ok`` is taken to be monotone.
    """
    high = max(1, 2 * low)
    while not ok(min(high, limit)):
        if high >= limit:
            return None
        low, high = high, 2 * high
    high = min(high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        if ok(middle):
            high = middle
        else:
            low = middle
    return high


def _halves(batches: list[dict]) -> tuple[list[dict], list[dict]]:
    """The samples of ``batches`` split in two halves (the second empty for one sample)."""
    if all(len(next(iter(b.values()))) == 1 for b in batches):  # a fixed batch of one
        return batches[::2], batches[1::2]
    first, second = [], []
    for batch in batches:
        rows = len(next(iter(batch.values())))
        cut = (rows + 1) // 2
        first.append({k: v[:cut] for k, v in batch.items()})
        if rows - cut:
            second.append({k: v[cut:] for k, v in batch.items()})
    return first, second
