"""Linear maps of a feature map as convolution kernels, and exact algebra on them.

A :class:`ConvKernel` is ``y = conv(x, weight, groups, strides, dilations, pads) + bias`` for a
2-D NCHW input. Convolutions, identity, average pooling and BatchNormalization on top of them
all have this form. Reparameterization is algebra on these kernels, done in float64:

* ``add``: the sum of two branches reading the same input becomes one kernel. Both windows
  are put into the smallest window covering them (zero-padded, centres aligned by their real
  input offsets), grouped convs are re-expressed at the gcd of their group counts, and biases
  add. The branches must have equal strides, compatible dilations and the same input span,
  so the outputs align element for element.
* ``then``: a kernel followed by another becomes one kernel. This is exact only where the
  zero padding of the second map sees zeros in the original too: the first map's bias must be
  zero, or the second map must not pad. The first map must have stride 1, unless the second
  is pointwise.
* ``scale``: an affine per-output-channel map (BatchNormalization, a Mul/Add by a per-channel
  constant) after the kernel.

Offsets: along each spatial axis a kernel reads input positions
``o * stride + begin + i * dilation`` for ``i`` in ``0..k-1``, with ``begin = -pad_begin``;
``span = pad_begin + pad_end - (k - 1) * dilation`` fixes the output size together with the
input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


class NotExact(Exception):
    """The requested algebra would not reproduce the original outputs exactly."""


@dataclass(frozen=True, eq=False)
class ConvKernel:
    """A 2-D convolution with bias, as float64 arrays plus geometry."""

    weight: np.ndarray  # (C_out, C_in / group, kh, kw)
    bias: np.ndarray  # (C_out,)
    group: int
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads_begin: tuple[int, int]
    pads_end: tuple[int, int]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def conv(
        cls,
        weight: np.ndarray,
        bias: np.ndarray | None,
        *,
        group: int = 1,
        strides=(1, 1),
        dilations=(1, 1),
        pads=(0, 0, 0, 0),
    ) -> ConvKernel:
        """From ONNX Conv parameters (``pads`` = [h_begin, w_begin, h_end, w_end])."""
        weight = np.asarray(weight, np.float64)
        cout = weight.shape[0]
        bias = np.zeros(cout) if bias is None else np.asarray(bias, np.float64)
        return cls(
            weight,
            bias,
            int(group),
            tuple(int(s) for s in strides),
            tuple(int(d) for d in dilations),
            (int(pads[0]), int(pads[1])),
            (int(pads[2]), int(pads[3])),
        )

    @classmethod
    def identity(cls, channels: int) -> ConvKernel:
        """The identity map on ``channels`` channels (a depthwise 1x1 kernel of ones)."""
        return cls.conv(np.ones((channels, 1, 1, 1)), None, group=channels)

    @classmethod
    def average_pool(cls, channels: int, kernel, strides, pads) -> ConvKernel:
        """AveragePool with count_include_pad=1 (or no padding) as a depthwise conv."""
        kh, kw = kernel
        weight = np.full((channels, 1, kh, kw), 1.0 / (kh * kw))
        return cls.conv(weight, None, group=channels, strides=strides, pads=pads)

    # ------------------------------------------------------------------ properties
    @property
    def out_channels(self) -> int:
        """Output channels."""
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        """Input channels."""
        return self.weight.shape[1] * self.group

    @property
    def kernel(self) -> tuple[int, int]:
        """Kernel height and width."""
        return self.weight.shape[2], self.weight.shape[3]

    @property
    def pointwise(self) -> bool:
        """1x1, stride 1, no padding: acts on channels only."""
        return (
            self.kernel == (1, 1)
            and self.strides == (1, 1)
            and self.pads_begin == (0, 0)
            and self.pads_end == (0, 0)
        )

    def span(self, axis: int) -> int:
        """``pad_begin + pad_end - (k - 1) * dilation``: equal spans, equal output sizes.

        The output size is ``floor((H + span - 1) / stride) + 1``.
        """
        extent = (self.kernel[axis] - 1) * self.dilations[axis]
        return self.pads_begin[axis] + self.pads_end[axis] - extent

    @property
    def pads(self) -> list[int]:
        """ONNX pads attribute."""
        return [*self.pads_begin, *self.pads_end]

    @property
    def macs_per_output(self) -> int:
        """Multiply-accumulates per output element."""
        return math.prod(self.weight.shape[1:])

    # ------------------------------------------------------------------ algebra
    def regroup(self, group: int) -> ConvKernel:
        """The same map as a conv with ``group`` groups (``group`` must divide ours)."""
        if group == self.group:
            return self
        if self.group % group:
            raise NotExact(f"cannot express {self.group} groups as {group}")
        cout, cin_per, kh, kw = self.weight.shape
        cin = cin_per * self.group
        out_per_new, in_per_new = cout // group, cin // group
        out_per_old = cout // self.group
        dense = np.zeros((cout, in_per_new, kh, kw))
        for o in range(cout):
            old_group = o // out_per_old
            new_group = o // out_per_new
            offset = old_group * cin_per - new_group * in_per_new
            dense[o, offset : offset + cin_per] = self.weight[o]
        return replace(self, weight=dense, group=group)

    def _dilation_for(self, axis: int, other: ConvKernel) -> int:
        mine, theirs = self.dilations[axis], other.dilations[axis]
        if self.kernel[axis] == 1:
            return theirs
        if other.kernel[axis] == 1 or mine == theirs:
            return mine
        raise NotExact(f"dilations {mine} and {theirs} differ on axis {axis}")

    def _widen(self, begin: tuple[int, int], size: tuple[int, int], dilations) -> np.ndarray:
        """Our weight placed in a window starting at input offset ``begin``."""
        cout, cin_per, kh, kw = self.weight.shape
        widened = np.zeros((cout, cin_per, *size))
        starts = []
        for axis in range(2):
            offset = -self.pads_begin[axis] - begin[axis]
            if offset % dilations[axis]:
                raise NotExact("kernel taps fall between the merged dilated taps")
            starts.append(offset // dilations[axis])
        widened[:, :, starts[0] : starts[0] + kh, starts[1] : starts[1] + kw] = self.weight
        return widened

    def add(self, other: ConvKernel) -> ConvKernel:
        """The kernel of ``self(x) + other(x)``."""
        if self.in_channels != other.in_channels or self.out_channels != other.out_channels:
            raise NotExact(
                f"channel counts differ ({self.in_channels}->{self.out_channels} vs "
                f"{other.in_channels}->{other.out_channels})"
            )
        if self.strides != other.strides:
            raise NotExact(f"strides differ ({self.strides} vs {other.strides})")
        if any(self.span(a) != other.span(a) for a in range(2)):
            raise NotExact("branches read different input spans (output sizes may differ)")
        dilations = tuple(self._dilation_for(a, other) for a in range(2))
        begin, end = [], []
        for axis in range(2):
            begins = [-self.pads_begin[axis], -other.pads_begin[axis]]
            ends = [
                b + (k.kernel[axis] - 1) * dilations[axis] if k.kernel[axis] > 1 else b
                for b, k in zip(begins, (self, other))
            ]
            begin.append(min(begins))
            end.append(max(ends))
        size = tuple((end[a] - begin[a]) // dilations[a] + 1 for a in range(2))
        group = math.gcd(self.group, other.group)
        a, b = self.regroup(group), other.regroup(group)
        weight = a._widen(tuple(begin), size, dilations) + b._widen(tuple(begin), size, dilations)
        pads_begin = (-begin[0], -begin[1])
        # Keep the span: pad_end = span - pad_begin + (size - 1) * dilation = span + end.
        pads_end = tuple(self.span(axis) + end[axis] for axis in range(2))
        return ConvKernel(
            weight,
            self.bias + other.bias,
            group,
            self.strides,
            dilations,
            pads_begin,
            pads_end,
        )

    def scale(self, factor: np.ndarray, shift: np.ndarray) -> ConvKernel:
        """The kernel of ``factor[c] * self(x)[c] + shift[c]``."""
        factor = np.broadcast_to(np.asarray(factor, np.float64), (self.out_channels,))
        shift = np.broadcast_to(np.asarray(shift, np.float64), (self.out_channels,))
        return replace(
            self,
            weight=self.weight * factor[:, None, None, None],
            bias=self.bias * factor + shift,
        )

    def then(self, second: ConvKernel) -> ConvKernel:
        """The kernel of ``second(self(x))``."""
        first = self
        if first.out_channels != second.in_channels:
            raise NotExact("channel counts do not chain")
        if any(p for p in (*second.pads_begin, *second.pads_end)) and np.any(first.bias != 0):
            raise NotExact(
                "the second map zero-pads an input whose border is the first map's non-zero bias"
            )
        if second.pointwise and second.group == second.in_channels == second.out_channels:
            # A per-channel affine map (BatchNormalization): scale the first kernel.
            return first.scale(second.weight[:, 0, 0, 0], second.bias)
        if second.pointwise:
            w2 = second.regroup(1).weight[:, :, 0, 0]  # (C_out, C_mid)
            w1 = first.regroup(1).weight  # (C_mid, C_in, kh, kw)
            weight = np.einsum("om,mihw->oihw", w2, w1)
            bias = w2 @ first.bias + second.bias
            merged = replace(first, weight=weight, bias=bias, group=1)
            return _depthwise_if_possible(merged, first, second)
        if first.strides != (1, 1) or first.dilations != (1, 1) or second.dilations != (1, 1):
            raise NotExact("only a stride-1, undilated first map composes with a spatial one")
        if not first.pointwise and any((*second.pads_begin, *second.pads_end)):
            raise NotExact("the second map pads the first map's output")
        w1 = first.regroup(1).weight  # (C_mid, C_in, k1h, k1w)
        w2 = second.regroup(1).weight  # (C_out, C_mid, k2h, k2w)
        k1h, k1w = w1.shape[2:]
        k2h, k2w = w2.shape[2:]
        weight = np.zeros((w2.shape[0], w1.shape[1], k1h + k2h - 1, k1w + k2w - 1))
        for i in range(k2h):
            for j in range(k2w):
                weight[:, :, i : i + k1h, j : j + k1w] += np.einsum(
                    "om,mihw->oihw", w2[:, :, i, j], w1
                )
        bias = second.bias + np.einsum("omhw,m->o", w2, first.bias)
        pads_begin = tuple(first.pads_begin[a] + second.pads_begin[a] for a in range(2))
        pads_end = tuple(first.pads_end[a] + second.pads_end[a] for a in range(2))
        merged = ConvKernel(weight, bias, 1, second.strides, (1, 1), pads_begin, pads_end)
        return _depthwise_if_possible(merged, first, second)


def _depthwise_if_possible(merged: ConvKernel, first: ConvKernel, second: ConvKernel) -> ConvKernel:
    """Keep the gcd grouping of the two maps when the merged dense kernel allows it."""
    group = math.gcd(first.group, second.group)
    if group == 1 or merged.in_channels % group or merged.out_channels % group:
        return merged
    cout, cin = merged.out_channels, merged.in_channels
    out_per, in_per = cout // group, cin // group
    grouped = np.zeros((cout, in_per, *merged.kernel))
    for o in range(cout):
        g = o // out_per
        block = merged.weight[o, g * in_per : (g + 1) * in_per]
        outside = np.delete(merged.weight[o], np.s_[g * in_per : (g + 1) * in_per], axis=0)
        if np.any(outside != 0):
            return merged
        grouped[o] = block
    return replace(merged, weight=grouped, group=group)
