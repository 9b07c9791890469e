"""A small builder of onnx-ir graphs for the zoo, the tests and plugin authors.

It tracks the channel count of every value it makes so layers can be chained without
repeating sizes, and draws seeded weights::

    b = GraphBuilder("tiny", seed=0)
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.batch_norm(b.conv(x, 8, kernel=3)))
    b.output(y)
    model = b.build()
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

DEFAULT_OPSET = 17


class GraphBuilder:
    """Build an :class:`onnx_ir.Model` layer by layer with seeded weights."""

    def __init__(self, name: str, *, seed: int = 0, opset: int = DEFAULT_OPSET) -> None:
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.graph = ir.Graph([], [], nodes=[], name=name, opset_imports={"": opset})
        self.channels: dict[ir.Value, int] = {}
        self._counts: dict[str, int] = {}

    # ----------------------------------------------------------------------------- plumbing
    def unique(self, prefix: str) -> str:
        """A fresh name ``prefix_N``."""
        count = self._counts.get(prefix, 0)
        self._counts[prefix] = count + 1
        return f"{prefix}_{count}"

    def input(
        self,
        name: str,
        shape: Sequence[int | str | None],
        dtype: ir.DataType = ir.DataType.FLOAT,
    ) -> ir.Value:
        """Add a graph input (channels taken from axis 1 when it is an int)."""
        value = ir.val(name, dtype, list(shape))
        self.graph.inputs.append(value)
        if len(shape) > 1 and isinstance(shape[1], int):
            self.channels[value] = shape[1]
        return value

    def output(self, value: ir.Value, name: str | None = None) -> ir.Value:
        """Mark ``value`` as a graph output (renamed to ``name`` when given)."""
        if name is not None:
            value.name = name
        self.graph.outputs.append(value)
        return value

    def initializer(self, array: np.ndarray, prefix: str = "w") -> ir.Value:
        """Add a constant initializer holding ``array``."""
        name = self.unique(prefix)
        value = ir.val(name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        self.graph.register_initializer(value)
        return value

    def op(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attributes: dict | None = None,
        *,
        channels: int | None = None,
        num_outputs: int = 1,
        domain: str = "",
    ) -> ir.Value:
        """Append any node; ``channels`` defaults to the first input's."""
        name = self.unique(op_type.lower())
        node = ir.node(
            op_type,
            list(inputs),
            attributes or {},
            domain=domain,
            name=name,
            num_outputs=num_outputs,
        )
        for index, out in enumerate(node.outputs):
            out.name = f"{name}_out{index}" if num_outputs > 1 else f"{name}_out"
        self.graph.append(node)
        if channels is None and inputs and inputs[0] is not None:
            channels = self.channels.get(inputs[0])
        if channels is not None:
            for out in node.outputs:
                self.channels[out] = channels
        return node.outputs[0]

    def build(self, *, producer: str = "lightir.zoo") -> ir.Model:
        """The finished model, with types and shapes inferred for every value."""
        model = ir.Model(self.graph, ir_version=8, producer_name=producer)
        ir.passes.common.ShapeInferencePass()(model)
        return model

    # ------------------------------------------------------------------------------- layers
    def conv_weight(self, cout: int, cin_per_group: int, kernel: tuple[int, int]) -> np.ndarray:
        """He-normal weights, so activations keep their scale through the network."""
        fan_in = cin_per_group * kernel[0] * kernel[1]
        shape = (cout, cin_per_group, *kernel)
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def conv(
        self,
        x: ir.Value,
        cout: int,
        kernel: int | tuple[int, int] = 3,
        *,
        stride: int = 1,
        pads: Sequence[int] | None = None,
        groups: int = 1,
        dilation: int = 1,
        bias: bool = False,
        weight: ir.Value | None = None,
    ) -> ir.Value:
        """A 2-D convolution; ``pads`` default to "same" for odd kernels."""
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        cin = self.channels[x]
        if pads is None:
            pads = [dilation * (kh // 2), dilation * (kw // 2)] * 2
        if weight is None:
            weight = self.initializer(self.conv_weight(cout, cin // groups, (kh, kw)), "conv_w")
        inputs = [x, weight]
        if bias:
            inputs.append(self.initializer(self.rng.normal(0, 0.1, cout).astype(np.float32), "b"))
        attributes = {
            "kernel_shape": [kh, kw],
            "strides": [stride, stride],
            "pads": list(pads),
            "dilations": [dilation, dilation],
            "group": groups,
        }
        return self.op("Conv", inputs, attributes, channels=cout)

    def batch_norm(self, x: ir.Value, *, epsilon: float = 1e-5) -> ir.Value:
        """Inference-mode BatchNormalization with non-trivial statistics."""
        c = self.channels[x]
        rng = self.rng
        params = [
            rng.uniform(0.5, 1.5, c),  # gamma
            rng.normal(0.0, 0.1, c),  # beta
            rng.normal(0.0, 0.1, c),  # running mean
            rng.uniform(0.5, 2.0, c),  # running variance
        ]
        values = [
            self.initializer(p.astype(np.float32), n)
            for p, n in zip(params, ["bn_gamma", "bn_beta", "bn_mean", "bn_var"])
        ]
        return self.op("BatchNormalization", [x, *values], {"epsilon": epsilon})

    def relu(self, x: ir.Value) -> ir.Value:
        """Relu."""
        return self.op("Relu", [x])

    def relu6(self, x: ir.Value) -> ir.Value:
        """Clip(0, 6), as exporters write ReLU6."""
        low = self.initializer(np.array(0.0, np.float32), "clip_min")
        high = self.initializer(np.array(6.0, np.float32), "clip_max")
        return self.op("Clip", [x, low, high])

    def add(self, a: ir.Value, b: ir.Value) -> ir.Value:
        """Elementwise Add."""
        return self.op("Add", [a, b])

    def max_pool(self, x: ir.Value, kernel: int = 2, stride: int = 2) -> ir.Value:
        """MaxPool without padding."""
        return self.op("MaxPool", [x], {"kernel_shape": [kernel, kernel], "strides": [stride] * 2})

    def global_avg_pool(self, x: ir.Value) -> ir.Value:
        """GlobalAveragePool."""
        return self.op("GlobalAveragePool", [x])

    def flatten(self, x: ir.Value, features: int | None = None) -> ir.Value:
        """Flatten(axis=1); ``features`` is the flattened width when it is not the channels."""
        return self.op("Flatten", [x], {"axis": 1}, channels=features)

    def gemm(self, x: ir.Value, out_features: int, *, in_features: int | None = None) -> ir.Value:
        """Gemm(x, W^T) + b with transB=1, as PyTorch exports Linear."""
        fan_in = in_features or self.channels[x]
        weight = self.rng.standard_normal((out_features, fan_in)) * np.sqrt(1.0 / fan_in)
        w = self.initializer(weight.astype(np.float32), "fc_w")
        b = self.initializer(self.rng.normal(0, 0.05, out_features).astype(np.float32), "fc_b")
        return self.op("Gemm", [x, w, b], {"transB": 1}, channels=out_features)
