"""Channels-last for float32 convolutions on CPUs (issue 17 item 2).

ONNX convolutions are NCHW with OIHW weights. Lowered as they are, the innermost loops of a
conv kernel run along the image width, and along the kernel's own 3 or 1 taps in the
weights, which is not where a CPU's vector lanes pay. In NHWC with HWIO weights both the
output and the weights have the output channels innermost and contiguous, so MetaSchedule's
x86 tiling vectorizes along them (16 float32 lanes with AVX-512).

``ConvertLayout`` rewrites every conv and carries NHWC through the elementwise ops, pools
and adds between them; what is left is one transpose at the input and one where a tensor
leaves channels-last (a flatten, a reshape). The weight and bias transposes are constants
and are folded by the "zero" pipeline. The values are the same sums in another order
(checked against onnxruntime with the exact tolerance like every build).

Measured in ``tools/README.md`` (``bench_lowering.py --layout``).
"""

from __future__ import annotations

LAYOUTS = ("nhwc", "nchw")


def channels_last(mod):
    """``mod`` with its float convolutions in NHWC / HWIO."""
    from tvm import relax

    return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
