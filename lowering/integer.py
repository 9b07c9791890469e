"""Real int8 through TVM: QDQ convolutions and matmuls become integer ones.

TVM's ONNX importer turns lightir's int8 model (uint8 activations behind QuantizeLinear ->
DequantizeLinear, int8 weights per output channel behind a DequantizeLinear, int32 bias)
into ``dequantize`` calls feeding float32 ``conv2d`` / ``matmul``: float fake-quant, no
faster than the float model. :func:`integer_qdq` rewrites each

    conv2d(dequantize(x_u8, s_x, z_x), dequantize(w_s8, s_w[o], 0))

into an integer convolution that accumulates in int32 and a float epilogue:

    (conv2d(pad(x_u8, value=z_x), w_s8, out_dtype=int32) - z_x * sum(w_s8[o])) * (s_x * s_w[o])

exactly the same value as the fake-quant convolution computes, before float rounding: the
uint8 input is padded with its zero point (a real zero), and the zero point's share of
every output is a per-channel constant worked out here from the weights. The bias add and
the output's ``quantize`` stay as they are; the "zero" pipeline fuses them into the
convolution's epilogue. ``matmul`` with a constant weight is rewritten the same way.

u8 x s8 with int32 accumulation is the operand form of x86's VNNI ``vpdpbusd`` (and of
AVX-512BW's ``vpmaddubsw``), which MetaSchedule's x86 rules tensorize when the target has it.
Anything that is not this pattern (per-channel activations, a non-zero weight zero point, a
weight that is not a constant) is left as float fake-quant.
"""

from __future__ import annotations

import numpy as np


def integer_qdq(mod):
    """``mod`` with every QDQ conv2d / matmul of the form above computed in integers.

    Returns ``(mod, count)``: the rewritten module and how many ops became integer ones.
    """
    import tvm
    from tvm import relax

    dequantize = tvm.ir.Op.get("relax.dequantize")
    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    matmul = tvm.ir.Op.get("relax.matmul")
    permute = tvm.ir.Op.get("relax.permute_dims")

    def constant(expr) -> np.ndarray | None:
        # TVM 0.27: relax constants are tvm.ir.expr.Constant, their tensor is .value
        return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None

    @relax.expr_functor.mutator
    class Integer(relax.PyExprMutator):
        def __init__(self, module) -> None:
            super().__init__(module)
            self.module = module
            self.count = 0

        def run(self):
            for var, func in self.module.functions_items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(var, self.visit_expr(func))
            return self.builder_.get()

        def bound(self, expr):
            """The call ``expr`` names, following variables to their bindings."""
            while isinstance(expr, relax.Var):
                value = self.lookup_binding(expr)
                if value is None:
                    return expr
                expr = value
            return expr

        def activation(self, expr):
            """(x_u8, s_x, z_x) when ``expr`` dequantizes a uint8 tensor per tensor."""
            call = self.bound(expr)
            if not isinstance(call, relax.Call) or call.op != dequantize:
                return None
            x, scale, zero = call.args
            s, z = constant(scale), constant(zero)
            if s is None or z is None or s.size != 1 or z.size != 1:
                return None
            if str(x.ty.dtype) != "uint8":
                return None
            return x, float(s.reshape(())), int(z.reshape(()))

        def weight(self, expr, transposed_ok: bool = False):
            """(w_s8, s_w, axis) when ``expr`` dequantizes a constant int8 weight, zero point 0.

            For matmul the weight may be a ``permute_dims`` of one (Gemm with transB): the
            codes come back already transposed and ``axis`` names the output axis.
            """
            call = self.bound(expr)
            order, permuted = None, False
            if transposed_ok and isinstance(call, relax.Call) and call.op == permute:
                axes = call.attrs.axes
                order = None if axes is None else [int(a) for a in axes]
                call, permuted = self.bound(call.args[0]), True
            if not isinstance(call, relax.Call) or call.op != dequantize:
                return None
            codes, scale, zero = (constant(a) for a in call.args)
            if codes is None or scale is None or zero is None or codes.dtype != np.int8:
                return None
            if np.any(zero != 0):
                return None
            axis = int(call.attrs.axis) % codes.ndim
            if permuted:
                order = order or list(range(codes.ndim))[::-1]
                axis = order.index(axis)
                codes = np.transpose(codes, order)
            return codes, np.asarray(scale, np.float32), axis

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            rewrite = {conv2d: self.conv, matmul: self.matmul}.get(call.op)
            new = None if rewrite is None else rewrite(call)
            return call if new is None else new

        def conv(self, call):
            attrs = call.attrs
            if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
                return None
            act, wt = self.activation(call.args[0]), self.weight(call.args[1])
            if act is None or wt is None or wt[2] != 0:
                return None
            (x, s_x, z_x), (codes, s_w, _) = act, wt
            out = codes.shape[0]
            op, emit = relax.op, self.builder_.emit
            padding = [int(p) for p in attrs.padding]
            if any(padding):
                top, left, bottom, right = padding
                x = emit(op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right], "constant", z_x))
            acc = emit(
                op.nn.conv2d(
                    x,
                    relax.const(codes),
                    strides=[int(s) for s in attrs.strides],
                    padding=0,
                    dilation=[int(d) for d in attrs.dilation],
                    groups=int(attrs.groups),
                    out_dtype="int32",
                )
            )
            shift = z_x * codes.astype(np.int64).sum(axis=(1, 2, 3))
            scale = s_x * np.broadcast_to(s_w, (out,)).astype(np.float32)
            self.count += 1
            return self.epilogue(acc, shift, scale, (1, out, 1, 1))

        def matmul(self, call):
            act = self.activation(call.args[0])
            wt = self.weight(call.args[1], transposed_ok=True)
            if act is None or wt is None or wt[0].ndim != 2 or wt[2] != 1:
                return None
            (x, s_x, z_x), (codes, s_w, _) = act, wt
            out = codes.shape[1]
            acc = self.builder_.emit(relax.op.matmul(x, relax.const(codes), out_dtype="int32"))
            shift = z_x * codes.astype(np.int64).sum(axis=0)
            scale = s_x * np.broadcast_to(s_w, (out,)).astype(np.float32)
            rank = len(call.ty.shape)
            self.count += 1
            return self.epilogue(acc, shift, scale, (1,) * (rank - 1) + (out,))

        def epilogue(self, acc, shift, scale, shape):
            """float32((acc - shift) * scale), broadcast per output channel."""
            op, emit = relax.op, self.builder_.emit
            if np.any(shift):
                acc = emit(op.subtract(acc, relax.const(shift.astype(np.int32).reshape(shape))))
            real = emit(op.astype(acc, "float32"))
            return op.multiply(real, relax.const(scale.reshape(shape)))

    mutator = Integer(mod)
    rewritten = mutator.run()
    return relax.transform.DeadCodeElimination()(rewritten), mutator.count


def vnni_kernels(executable) -> dict[str, int]:
    """How many of an x86 build's conv / matmul kernels use VNNI's ``vpdpbusd``.

    Counted in the assembly LLVM emits for each function (about 1.5 s on a small model):
    MetaSchedule's tensorized schedules and LLVM's own vectorizer both emit it.
    """
    import re

    counts = {"kernels": 0, "vpdpbusd": 0}
    for module in executable.mod.imports:
        if module.kind != "llvm":
            continue
        parts = re.split(r"\n\t\.type\t([\w.$]+),@function\n", module.inspect_source("asm"))
        for name, body in zip(parts[1::2], parts[2::2]):
            if "conv2d" in name or "matmul" in name:
                counts["kernels"] += 1
                counts["vpdpbusd"] += "vpdpbusd" in body
    return counts
