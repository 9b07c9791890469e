"""Fold inference-mode BatchNormalization into the preceding linear op.

With ``s = gamma / sqrt(var + eps)`` per channel c of the BN:

    Conv / ConvTranspose:  W'[c] = W[c] * s[c]        b'[c] = (b[c] - mean[c]) * s[c] + beta[c]
    Gemm (alpha, beta):    W'   = alpha * W * s (per output column)
                           C'   = (beta * C - mean) * s + beta_bn,  then alpha = beta = 1
    MatMul (rank-2 out):   W'   = W * s (per column), followed by Add(b' = beta_bn - mean * s)

The arithmetic is done in float64 and rounded once to the weight's dtype.

Preconditions (each refusal is reported by ``--explain``): BN in inference mode with constant
statistics and only its first output used; constant weight and bias that no other node
reads; the linear op's output read by the BN alone (not a graph output); a ConvTranspose's
channel count divisible by its group; a MatMul whose output is rank 2 (for higher ranks the
BN channel axis is not the MatMul's feature axis).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from lightir.analysis.bn_stats import FOLDED_BN
from lightir.ir_util import constant
from lightir.pass_base import Pass, PassContext, PassResult
from lightir.registry import register_pass
from lightir.rewrite import apply_rules, new_initializer

logger = logging.getLogger(__name__)


class _FoldIntoLinear(RewriteRuleClassBase):
    """Shared checks and BN arithmetic; subclasses say how the weight is scaled."""

    op_type: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__(name=f"fold-bn-into-{self.op_type.lower()}")

    def pattern(self, op, x):
        linear = getattr(op, self.op_type)(x, _allow_other_inputs=True, _outputs=["linear_out"])
        return op.BatchNormalization(linear, _allow_other_inputs=True, _outputs=["bn_out"])

    # ---- checks
    def check(self, context, x, linear_out: ir.Value, bn_out: ir.Value) -> MatchResult:
        result = MatchResult()
        bn, linear = bn_out.producer(), linear_out.producer()
        if bn.attributes.get_int("training_mode", 0):
            return result.fail("BatchNormalization is in training mode")
        if any(out.uses() or out.is_graph_output() for out in bn.outputs[1:]):
            return result.fail("BatchNormalization's running-statistics outputs are used")
        for value in bn.inputs[1:5]:
            if constant(value) is None:
                return result.fail(f"BN parameter '{value.name}' is not a constant")
        if len(linear.inputs) < 2 or constant(linear.inputs[1]) is None:
            return result.fail(f"{self.op_type} weight is not a constant")
        for value in linear.inputs[1:3]:
            if value is None:
                continue
            if constant(value) is None:
                return result.fail(f"{self.op_type} input '{value.name}' is not a constant")
            others = [n.name for n, _ in value.uses() if n is not linear]
            if others:
                return result.fail(f"weight '{value.name}' is shared with node '{others[0]}'")
        channels = bn.inputs[1].const_value.shape.numpy()
        if len(channels) != 1 or any(
            v.const_value.shape.numpy() != channels for v in bn.inputs[1:5]
        ):
            return result.fail("BN parameters are not 1-D vectors of one length")
        if linear.inputs[1].const_value.dtype not in (
            ir.DataType.FLOAT,
            ir.DataType.FLOAT16,
            ir.DataType.DOUBLE,
        ):
            return result.fail("weight is not floating point")
        reason = self.check_op(linear, channels[0], linear_out)
        if reason:
            return result.fail(reason)
        return result

    def check_op(self, linear: ir.Node, channels: int, linear_out: ir.Value) -> str | None:
        """Op-specific precondition; returns the reason to decline or None."""
        raise NotImplementedError

    # ---- rewrite
    @staticmethod
    def bn_scale_shift(bn: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gamma, beta, mean, var = (v.const_value.numpy().astype(np.float64) for v in bn.inputs[1:5])
        eps = bn.attributes.get_float("epsilon", 1e-5)
        scale = gamma / np.sqrt(var + eps)
        return scale, beta, mean

    def rewrite(self, op, x, linear_out: ir.Value, bn_out: ir.Value):
        bn, linear = bn_out.producer(), linear_out.producer()
        scale, beta, mean = self.bn_scale_shift(bn)
        weight = linear.inputs[1].const_value.numpy()
        dtype = linear.inputs[1].const_value.dtype
        bias = (
            linear.inputs[2].const_value.numpy().astype(np.float64)
            if len(linear.inputs) > 2 and linear.inputs[2] is not None
            else None
        )
        new_weight, new_bias, attributes, extra_add = self.fold(
            linear, weight.astype(np.float64), bias, scale, beta, mean
        )
        w_value = new_initializer(op, linear, "bnfold_weight", new_weight, dtype)
        b_value = new_initializer(op, linear, "bnfold_bias", new_bias, dtype)
        # The folded layer keeps the layer's name (reports, Netron and --report-html's
        # per-layer table follow layers by name); the old node leaves the graph with the BN.
        if extra_add:
            product = op.op(self.op_type, x, w_value, _name=linear.name or None, **attributes)
            out = op.Add(product, b_value)
        else:
            out = op.op(self.op_type, x, w_value, b_value, _name=linear.name or None, **attributes)
        # The BN's statistics stay on the node that now computes its output: without data,
        # int8's bias correction and prune's compensation read them (analysis.bn_stats).
        gamma = bn.inputs[1].const_value.numpy().astype(np.float64)
        out.producer().meta[FOLDED_BN] = (gamma, beta.copy())
        return out

    def fold(self, linear, weight, bias, scale, beta, mean):
        """Return (new weight, new bias, attributes, whether a separate Add is needed)."""
        raise NotImplementedError


def _attrs(node: ir.Node) -> dict:
    return {name: attr for name, attr in node.attributes.items()}


class FoldIntoConv(_FoldIntoLinear):
    """BN(Conv(x)) -> Conv(x)."""

    op_type: ClassVar[str] = "Conv"

    def check_op(self, linear, channels, linear_out):
        out_channels = linear.inputs[1].const_value.shape.numpy()[0]
        if out_channels != channels:
            return f"Conv has {out_channels} output channels, the BN {channels}"
        return None

    def fold(self, linear, weight, bias, scale, beta, mean):
        bias = np.zeros_like(mean) if bias is None else bias
        shape = (-1,) + (1,) * (weight.ndim - 1)
        return weight * scale.reshape(shape), (bias - mean) * scale + beta, _attrs(linear), False


class FoldIntoConvTranspose(_FoldIntoLinear):
    """BN(ConvTranspose(x)) -> ConvTranspose(x)."""

    op_type: ClassVar[str] = "ConvTranspose"

    def check_op(self, linear, channels, linear_out):
        shape = linear.inputs[1].const_value.shape.numpy()
        group = linear.attributes.get_int("group", 1)
        if shape[0] % group:
            return f"ConvTranspose input channels {shape[0]} not divisible by group {group}"
        if shape[1] * group != channels:
            return f"ConvTranspose has {shape[1] * group} output channels, the BN {channels}"
        return None

    def fold(self, linear, weight, bias, scale, beta, mean):
        # Weight layout: (C_in, C_out / group, *kernel); output channel g * C_out/g + j.
        group = linear.attributes.get_int("group", 1)
        c_in, per_group = weight.shape[:2]
        kernel = weight.shape[2:]
        grouped = weight.reshape(group, c_in // group, per_group, *kernel)
        factor = scale.reshape(group, 1, per_group, *([1] * len(kernel)))
        new_weight = (grouped * factor).reshape(weight.shape)
        bias = np.zeros_like(mean) if bias is None else bias
        return new_weight, (bias - mean) * scale + beta, _attrs(linear), False


class FoldIntoGemm(_FoldIntoLinear):
    """BN(Gemm(x)) -> Gemm(x)."""

    op_type: ClassVar[str] = "Gemm"

    def check_op(self, linear, channels, linear_out):
        shape = linear.inputs[1].const_value.shape.numpy()
        trans_b = linear.attributes.get_int("transB", 0)
        features = shape[0] if trans_b else shape[1]
        if features != channels:
            return f"Gemm has {features} output features, the BN {channels}"
        return None

    def fold(self, linear, weight, bias, scale, beta, mean):
        alpha = linear.attributes.get_float("alpha", 1.0)
        gemm_beta = linear.attributes.get_float("beta", 1.0)
        trans_b = linear.attributes.get_int("transB", 0)
        factor = scale.reshape(-1, 1) if trans_b else scale.reshape(1, -1)
        new_weight = alpha * weight * factor
        c = np.zeros_like(mean) if bias is None else gemm_beta * bias
        new_bias = (c - mean) * scale + beta
        attributes = {k: v for k, v in _attrs(linear).items() if k not in ("alpha", "beta")}
        return new_weight, new_bias, attributes, False


class FoldIntoMatMul(_FoldIntoLinear):
    """BN(MatMul(x, W)) -> Add(MatMul(x, W'), b') for rank-2 outputs."""

    op_type: ClassVar[str] = "MatMul"

    def check_op(self, linear, channels, linear_out):
        shape = linear.inputs[1].const_value.shape.numpy()
        if len(shape) != 2:
            return f"MatMul weight has rank {len(shape)}, not 2"
        if linear_out.shape is None or len(linear_out.shape) != 2:
            return "MatMul output is not known to be rank 2 (BN axis 1 would not be its features)"
        if shape[1] != channels:
            return f"MatMul has {shape[1]} output features, the BN {channels}"
        return None

    def fold(self, linear, weight, bias, scale, beta, mean):
        return weight * scale.reshape(1, -1), beta - mean * scale, {}, True


RULES = [
    FoldIntoConv().rule(),
    FoldIntoConvTranspose().rule(),
    FoldIntoGemm().rule(),
    FoldIntoMatMul().rule(),
]


@register_pass("fold-bn", contract="exact")
class FoldBatchNorm(Pass):
    """Fold inference BatchNormalization into a preceding Conv, ConvTranspose, Gemm or MatMul."""

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Apply the fold rules, then drop the weights they replaced."""
        count = apply_rules(model, RULES, context)
        if count:
            common_passes.RemoveUnusedNodesPass()(model)
        remaining = sum(1 for g in model.graphs() for n in g if n.op_type == "BatchNormalization")
        logger.info("folded %d BatchNormalization nodes, %d left", count, remaining)
        return PassResult(model, modified=count > 0, stats={"folded": count, "left": remaining})
