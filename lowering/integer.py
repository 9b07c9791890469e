"""Real int8 through TVM: QDQ convolutions and matmuls become integer ones.

TVM's ONNX importer turns lightir's int8 model (uint8 activations behind QuantizeLinear ->
DequantizeLinear, int8 weights per output channel behind a DequantizeLinear, int32 bias)
into ``dequantize`` calls feeding float32 ``conv2d`` / ``matmul``: float fake-quant, no
faster than the float model. :func:`integer_qdq` rewrites each

    conv2d(dequantize(x_u8, s_x, z_x), dequantize(w_s8, s_w[o], 0))

into an integer convolution that accumulates in int32 and a float epilogue:

    (conv2d(x_u8, w_s8, out_dtype=int32) - shift[o]) * (s_x * s_w[o])

the same value the fake-quant convolution computes, before float rounding. ``shift`` is
the zero point's share, ``z_x`` times the sum of the weights a window reads; the integer
conv pads with 0 where a real zero is ``z_x``, so near the border of a padded conv the
shift is worked out position by position (a constant the size of the output, only for
inputs with a zero point). The bias add and the output's ``quantize`` stay; the "zero"
pipeline fuses them into the convolution's epilogue. ``matmul`` with a constant weight is
rewritten the same way.

u8 x s8 with int32 accumulation is the operand form of x86's VNNI ``vpdpbusd`` (and of
AVX-512BW's ``vpmaddubsw``). :func:`nhwc` then puts the convolutions in NHWC, input
channels innermost, and on x86 :func:`vnni_layout` reorders the constant weights into the
16 x 4 blocks the dot product reads, the form in which MetaSchedule's x86 rules tensorize
them (lightir.lowering.tuning makes those tensorized kernels build). Anything that is not
this pattern (per-channel activations, a non-zero weight zero point, a weight that is not a
constant) is left as float fake-quant.
"""

from __future__ import annotations

import numpy as np

from lightir.lowering.relax_util import mutate_functions


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
            self.count = 0

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
            padding = [int(p) for p in attrs.padding]
            strides = [int(s) for s in attrs.strides]
            dilation = [int(d) for d in attrs.dilation]
            acc = self.builder_.emit(
                relax.op.nn.conv2d(
                    x,
                    relax.const(codes),
                    strides=strides,
                    padding=padding,
                    dilation=dilation,
                    groups=int(attrs.groups),
                    out_dtype="int32",
                )
            )
            scale = s_x * np.broadcast_to(s_w, (out,)).astype(np.float32)
            self.count += 1
            if z_x and any(padding):
                # The integer conv pads with 0, a real zero is z_x: subtract z_x times the
                # weights inside the image, position by position (more near the border).
                shape = [int(d) for d in call.ty.shape]
                inside = _inside(
                    [int(d) for d in list(x.ty.shape)[2:]],
                    codes.shape[2:],
                    shape[2:],
                    padding,
                    strides,
                    dilation,
                )
                per_tap = codes.astype(np.int64).sum(axis=1)  # (out, kh, kw)
                shift = z_x * np.einsum("okl,klhw->ohw", per_tap, inside)[None]
                return self.epilogue(acc, shift, scale, (1, out, 1, 1))
            shift = z_x * codes.astype(np.int64).sum(axis=(1, 2, 3))
            return self.epilogue(acc, shift.reshape(1, out, 1, 1), scale, (1, out, 1, 1))

        def matmul(self, call):
            act = self.activation(call.args[0])
            wt = self.weight(call.args[1], transposed_ok=True)
            if act is None or wt is None or wt[0].ndim != 2 or wt[2] != 1:
                return None
            (x, s_x, z_x), (codes, s_w, _) = act, wt
            out = codes.shape[1]
            acc = self.builder_.emit(relax.op.matmul(x, relax.const(codes), out_dtype="int32"))
            shape = (1,) * (len(call.ty.shape) - 1) + (out,)
            shift = z_x * codes.astype(np.int64).sum(axis=0)
            scale = s_x * np.broadcast_to(s_w, (out,)).astype(np.float32)
            self.count += 1
            return self.epilogue(acc, shift.reshape(shape), scale, shape)

        def epilogue(self, acc, shift, scale, shape):
            """float32((acc - shift) * scale), the scale broadcast per output channel."""
            op, emit = relax.op, self.builder_.emit
            if np.any(shift):
                acc = emit(op.subtract(acc, relax.const(shift.astype(np.int32))))
            real = emit(op.astype(acc, "float32"))
            return op.multiply(real, relax.const(scale.reshape(shape)))

    mutator = Integer(mod)
    rewritten = mutate_functions(mutator, mod)
    return relax.transform.DeadCodeElimination()(rewritten), mutator.count


def vnni_kernels(executable) -> dict[str, int]:
    """How many of an x86 build's conv / matmul kernels use VNNI's ``vpdpbusd``.

    Counted in the assembly LLVM emits for each function (about 1.5 s on a small model):
    MetaSchedule's tensorized schedules and LLVM's own vectorizer both emit it.
    """
    counts = {"kernels": 0, "vpdpbusd": 0}
    for module in executable.mod.imports:
        if module.kind == "llvm":
            kernels = _vnni_by_kernel(module.inspect_source("asm"))
            counts["kernels"] += len(kernels)
            counts["vpdpbusd"] += sum(kernels.values())
    return counts


def _vnni_by_kernel(asm: str) -> dict[str, bool]:
    """{conv / matmul kernel: whether its code uses vpdpbusd} in an x86 assembly listing."""
    import re

    parts = re.split(r"\n\t\.type\t([\w.$]+),@function\n", asm)
    # A parallel loop's body is a function of its own (.L__tvm_parallel_lambda.N), emitted
    # after the kernel that launches it: that is where a tuned kernel's vpdpbusd is.
    kernels: dict[str, bool] = {}
    owner = None
    for name, body in zip(parts[1::2], parts[2::2]):
        if "__tvm_parallel_lambda" not in name:
            owner = name if ("conv2d" in name or "matmul" in name) else None
            if owner is not None:
                kernels.setdefault(owner, False)
        if owner is not None and "vpdpbusd" in body:
            kernels[owner] = True
    return kernels


def _inside(size, kernel, out, padding, strides, dilation) -> np.ndarray:
    """(kh, kw, oh, ow): 1 where kernel tap (kh, kw) of output (oh, ow) reads inside the image."""
    masks = []
    for axis in range(2):
        taps = np.arange(kernel[axis])[:, None] * dilation[axis]
        start = np.arange(out[axis])[None, :] * strides[axis] - padding[axis]
        where = start + taps
        masks.append((where >= 0) & (where < size[axis]))
    return np.einsum("kh,lw->klhw", masks[0].astype(np.int64), masks[1].astype(np.int64))


def elementwise_qdq(mod):
    """``mod`` with per-tensor ``quantize`` / ``dequantize`` spelled as elementwise ops.

    The same arithmetic as Relax's legalization of the two ops (``clip(round(x / s) + z)``
    cast to the integer type; ``(int32(q) - z) * s``), in ops that ``ConvertLayout`` can
    carry through: it knows no layout rule for the quantize ops and would put a layout
    transform on each side of every one.
    """
    import tvm
    from tvm import relax

    quantize = tvm.ir.Op.get("relax.quantize")
    dequantize = tvm.ir.Op.get("relax.dequantize")

    def scalar(expr) -> np.ndarray | None:
        if not isinstance(expr, tvm.ir.expr.Constant):
            return None
        value = expr.value.numpy()
        return value.reshape(()) if value.size == 1 else None

    @relax.expr_functor.mutator
    class Elementwise(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if call.op not in (quantize, dequantize):
                return call
            x, scale, zero = call.args
            s, z = scalar(scale), scalar(zero)
            out = str(call.attrs.out_dtype)
            if s is None or z is None or str(s.dtype) != "float32":
                return call
            op, emit = relax.op, self.builder_.emit
            if call.op == quantize:
                if out not in ("uint8", "int8"):
                    return call
                info = np.iinfo(out)
                scaled = emit(op.round(op.divide(x, relax.const(s))))
                shifted = emit(op.add(scaled, relax.const(np.float32(z))))
                # max(min(.)) as the legalization clamps; ConvertLayout has no rule for clip
                top = emit(op.minimum(shifted, relax.const(np.float32(info.max))))
                return op.astype(op.maximum(top, relax.const(np.float32(info.min))), out)
            if out != "float32" or str(x.ty.dtype) not in ("uint8", "int8"):
                return call
            centred = emit(op.subtract(op.astype(x, "int32"), relax.const(np.int32(z))))
            return op.multiply(op.astype(centred, "float32"), relax.const(s))

    return mutate_functions(Elementwise(mod), mod)


def nhwc(mod):
    """``mod`` with its convolutions in NHWC / OHWI and per-tensor Q/DQ made elementwise.

    Input channels innermost is the layout VNNI's dot product reads (4 consecutive uint8
    channels against 16 x 4 int8 weights): MetaSchedule's x86 rules find a tensorized
    schedule for NHWC integer convs and none for NCHW ones (checked on the digits CNN: 3 of
    its 4 convs; the fourth has one input channel). With the Q/DQ ops elementwise,
    ``ConvertLayout`` carries NHWC from one conv to the next, leaving one transpose at
    the input and one where the tensor is flattened.
    """
    from tvm import relax

    return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(
        elementwise_qdq(mod)
    )


def vnni_layout(mod):
    """``mod`` with its NHWC integer convs and 2-D integer matmuls on blocked weights.

    VNNI's dot product (``vpdpbusd``) multiplies 4 consecutive uint8 input channels with a
    16 x 4 block of int8 weights: 16 output channels, each with the same 4 input channels,
    64 contiguous bytes. In OHWI (or a matmul's K x N) those 64 bytes are strided, and
    MetaSchedule's tensorization of the OHWI convs matched nothing (TVM's tensorize: "buffer
    extent high-dim region must be element-wise"). Weights are constants, so they are
    reordered here once, to (O/16, KH, KW, I/4, 16, 4) (matmul: (N/16, K/4, 16, 4)), zero-padded
    to whole blocks; the op becomes a TE compute that reads them by ``o // 16`` and ``o % 16``
    and keeps the output in NHWC, so the epilogue still fuses into it. Input channels that
    are not a multiple of 4 are padded with zeros in the conv's own pad. Grouped convs and
    non-constant weights are left as they are. The values are those of the op replaced (an
    integer sum in another order): on a CPU without VNNI the kernels are plain loops.
    """
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    matmul = tvm.ir.Op.get("relax.matmul")
    permute = tvm.ir.Op.get("relax.permute_dims")

    @relax.expr_functor.mutator
    class Blocked(relax.PyExprMutator):
        def constant(self, expr) -> np.ndarray | None:
            """The value of ``expr``: a constant, or ConvertLayout's permute_dims of one."""
            while isinstance(expr, relax.Var) and self.lookup_binding(expr) is not None:
                expr = self.lookup_binding(expr)
            if isinstance(expr, tvm.ir.expr.Constant):
                return expr.value.numpy()
            if isinstance(expr, relax.Call) and expr.op == permute:
                inner = self.constant(expr.args[0])
                if inner is not None:
                    axes = expr.attrs.axes
                    return np.transpose(inner, None if axes is None else [int(a) for a in axes])
            return None

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if call.op == conv2d:
                new = self.conv(call)
            elif call.op == matmul:
                new = self.matmul(call)
            else:
                new = None
            return call if new is None else new

        def operands(self, call):
            x, w = call.args
            codes = self.constant(w)
            if codes is None or codes.dtype != np.int8 or str(call.attrs.out_dtype) != "int32":
                return None
            if str(x.ty.dtype) != "uint8":
                return None
            if any(not isinstance(d, tvm.tirx.IntImm) for d in x.ty.shape):
                return None
            return x, codes

        def conv(self, call):
            attrs, found = call.attrs, self.operands(call)
            if found is None or int(attrs.groups) != 1:
                return None
            if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != (
                "NHWC",
                "OHWI",
                "NHWC",
            ):
                return None
            x, codes = found
            out, kh, kw, channels = codes.shape
            blocks, groups = -(-out // 16), -(-channels // 4)
            padded = np.zeros((blocks * 16, kh, kw, groups * 4), np.int8)
            padded[:out, :, :, :channels] = codes
            packed = padded.reshape(blocks, 16, kh, kw, groups, 4).transpose(0, 2, 3, 4, 1, 5)
            return self.builder_.emit_te(
                _conv_vnni,
                x,
                relax.const(np.ascontiguousarray(packed)),
                out,
                [int(p) for p in attrs.padding],
                [int(s) for s in attrs.strides],
                [int(d) for d in attrs.dilation],
                groups * 4 - channels,
                primfunc_name_hint="conv2d_vnni",
            )

        def matmul(self, call):
            found = self.operands(call)
            if found is None or found[1].ndim != 2 or len(found[0].ty.shape) != 2:
                return None
            x, codes = found
            depth, out = codes.shape
            blocks, groups = -(-out // 16), -(-depth // 4)
            padded = np.zeros((groups * 4, blocks * 16), np.int8)
            padded[:depth, :out] = codes
            packed = padded.reshape(groups, 4, blocks, 16).transpose(2, 0, 3, 1)
            return self.builder_.emit_te(
                _matmul_vnni,
                x,
                relax.const(np.ascontiguousarray(packed)),
                out,
                groups * 4 - depth,
                primfunc_name_hint="matmul_vnni",
            )

    rewritten = mutate_functions(Blocked(mod), mod)
    # The op's binding is left as an alias of the emitted call_tir (``y = lv``); FuseOps
    # treats such a binding as opaque, and the epilogue would be a kernel of its own (an
    # int32 tensor written and read back per conv: measured on MTCNN O-Net, all 8 ops).
    rewritten = relax.transform.CanonicalizeBindings()(rewritten)
    return relax.transform.DeadCodeElimination()(rewritten)


def _conv_vnni(data, packed, out, padding, strides, dilation, extra_channels):
    """NHWC uint8 x blocked int8 -> NHWC int32 (see :func:`vnni_layout`)."""
    from tvm import te, topi

    top, left, bottom, right = padding
    if any(padding) or extra_channels:
        data = topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, extra_channels])
    batch, height, width, _ = (int(d) for d in data.shape)
    _, kh, kw, groups, _, _ = (int(d) for d in packed.shape)
    oh = (height - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (width - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rco = te.reduce_axis((0, groups), "rc_o")
    rci = te.reduce_axis((0, 4), "rc_i")

    def value(n, y, x, o):
        a = data[n, y * strides[0] + ry * dilation[0], x * strides[1] + rx * dilation[1],
                 rco * 4 + rci]  # fmt: skip
        b = packed[o // 16, ry, rx, rco, o % 16, rci]
        return te.sum(a.astype("int32") * b.astype("int32"), axis=[ry, rx, rco, rci])

    return te.compute((batch, oh, ow, out), value, name="conv2d_nhwc_vnni")


def _matmul_vnni(data, packed, out, extra_depth):
    """(M, K) uint8 x blocked int8 -> (M, N) int32 (see :func:`vnni_layout`)."""
    from tvm import te, topi

    if extra_depth:
        data = topi.nn.pad(data, [0, 0], [0, extra_depth])
    rows = int(data.shape[0])
    groups = int(packed.shape[1])
    rko = te.reduce_axis((0, groups), "rk_o")
    rki = te.reduce_axis((0, 4), "rk_i")

    def value(m, n):
        a = data[m, rko * 4 + rki].astype("int32")
        b = packed[n // 16, rko, n % 16, rki].astype("int32")
        return te.sum(a * b, axis=[rko, rki])

    return te.compute((rows, out), value, name="matmul_vnni")
