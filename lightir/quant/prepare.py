"""Getting a float model ready for Q/DQ: the rewrites int8 needs, equalization, the plan.

:func:`prepare_int8` is what ``int8`` and ``compress`` run before choosing which ops go int8;
:func:`lightir.quant.qdq.write_qdq` then writes the chosen ones.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from lightir.pass_base import PassContext
from lightir.quant.bias import correctable_layers, input_means
from lightir.quant.equalize import equalize
from lightir.quant.plan import QdqPlan, plan_qdq
from lightir.rewrite import apply_rules, new_initializer


class ShuffleAsGather(RewriteRuleClassBase):
    """A channel shuffle becomes one ``Gather(axis=1)``: exactly the same values.

    ``Reshape(N,g,C/g,...) -> Transpose(0,2,1,...) -> Reshape(N,C,...)`` permutes channels.

    onnxruntime runs integer convolutions in NHWC and cancels the layout transposes between
    them; it moves a Gather to NHWC but not a 5-D Transpose, so int8 ShuffleNet spent 4.5 of
    its 8.4 ms in generic uint8 transposes (fp32: 4.7 ms in all). With the Gather, int8 runs
    in 4.5 ms (measured with onnxruntime 1.32, one thread, on the onnx test ShuffleNet).
    """

    def __init__(self) -> None:
        super().__init__(name="shuffle-as-gather")

    def pattern(self, op, x, split, joined):
        """Reshape -> Transpose -> Reshape."""
        grouped = op.Reshape(x, split, _outputs=["grouped"])
        swapped = op.Transpose(grouped, _outputs=["swapped"])
        return op.Reshape(swapped, joined, _outputs=["shuffled"])

    def check(self, context, x, split, joined, grouped, swapped, shuffled) -> MatchResult:
        """A channel split, a swap of the two split axes, and the join back."""
        result = MatchResult()
        shapes = [v.shape for v in (x, grouped, shuffled)]
        if any(shape is None for shape in shapes):
            return result.fail("shapes not inferred")
        source, middle, out = (list(shape) for shape in shapes)
        rank = len(source)
        perm = list(swapped.producer().attributes.get_ints("perm", []))
        if rank < 3 or len(middle) != rank + 1 or perm != [0, 2, 1, *range(3, rank + 1)]:
            return result.fail("not a channel shuffle (Reshape to N,g,C/g,... then swap 1, 2)")
        channels, groups, width = source[1], middle[1], middle[2]
        if not all(isinstance(d, int) for d in (channels, groups, width)):
            return result.fail("channel count is not static")
        if groups * width != channels or middle[0] != source[0] or middle[3:] != source[2:]:
            return result.fail("the Reshape does more than split the channel axis")
        if out != source:
            return result.fail("the shuffle does not restore the input's shape")
        if any(v.uses().__len__() != 1 or v.is_graph_output() for v in (grouped, swapped)):
            return result.fail("an intermediate tensor is read elsewhere")
        return result

    def rewrite(self, op, x, split, joined, grouped, swapped, shuffled):
        """The same permutation as one Gather."""
        groups, width = grouped.shape[1], grouped.shape[2]
        order = np.arange(groups * width).reshape(groups, width).T.reshape(-1)
        indices = new_initializer(op, shuffled.producer(), "order", order, ir.DataType.INT64)
        return op.Gather(x, indices, axis=1)


def prepare_int8(
    model: ir.Model,
    context: PassContext,
    *,
    equalize_first: bool = True,
    bias_correct: bool = True,
    calibration: str = "percentile",
    batches: int = 8,
) -> QdqPlan:
    """Rewrite ``model`` for integer kernels (exactly) and plan its Q/DQ on the calibration data.

    Channel shuffles become a Gather, cross-layer equalization runs (``equalize_first``), the
    layers' input means are measured for bias correction (``bias_correct``: it applies to the
    layers actually quantized, so it happens when the plan is written), and the tensors around
    the quantizable ops are calibrated by ``calibration`` on ``batches`` batches of 8.
    """
    common_passes.ShapeInferencePass()(model)
    apply_rules(model, [ShuffleAsGather.rule()])
    common_passes.RemoveUnusedNodesPass()(model)
    if equalize_first:
        equalize(model, context)
    common_passes.ShapeInferencePass()(model)
    means = (
        input_means(model, correctable_layers(model), context.calibration, 256)
        if bias_correct
        else {}
    )
    return plan_qdq(model, context, calibration, batches, means)
