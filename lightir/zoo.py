"""Small realistic models built in code, with seeded weights and non-trivial BN statistics.

``lightir-opt zoo:NAME`` builds one in memory, so every example runs with no download. The
models have a dynamic batch dimension (``batch``) as exporters write them.

========== =============================================================================
resnet     ResNet-style: 3 stages of basic blocks with residual Adds, 1x1 downsample
mobilenetv2 MobileNetV2-style inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 project
vgg        VGG-style: conv/BN/ReLU stacks, max pools, Flatten and two hidden FC layers
repvgg     RepVGG train-time blocks: 3x3 conv+BN, 1x1 conv+BN and identity BN, summed
resnet50   ResNet-50-sized (bottlenecks [3, 4, 6, 3], 224x224, 25.6 M params): benchmarks
digits     a real trained CNN (committed fixture): 4 conv/BN/ReLU blocks and two FC layers
           trained on scikit-learn's 8x8 digits by ``tools/train_digits.py``; its test
           split (450 images) comes with it, so lossy passes are judged by real accuracy
========== =============================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx_ir as ir

from lightir.builder import GraphBuilder
from lightir.errors import UsageError

BATCH = "batch"


def _stem(b: GraphBuilder, channels: int, size: int) -> ir.Value:
    x = b.input("input", [BATCH, 3, size, size])
    return b.relu(b.batch_norm(b.conv(x, channels, 3)))


def _head(b: GraphBuilder, x: ir.Value, classes: int) -> ir.Model:
    x = b.flatten(b.global_avg_pool(x))
    b.output(b.gemm(x, classes), "logits")
    return b.build()


def resnet(seed: int = 0, size: int = 32, classes: int = 10) -> ir.Model:
    """ResNet-style network with basic blocks and residual Adds (~0.7 M params)."""
    b = GraphBuilder("resnet", seed=seed)
    x = _stem(b, 32, size)
    for stage, width in enumerate([32, 64, 128]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.relu(b.batch_norm(b.conv(x, width, 3, stride=stride)))
            y = b.batch_norm(b.conv(y, width, 3))
            shortcut = x
            if stride != 1 or b.channels[x] != width:
                shortcut = b.batch_norm(b.conv(x, width, 1, stride=stride))
            x = b.relu(b.add(y, shortcut))
    return _head(b, x, classes)


def mobilenetv2(seed: int = 0, size: int = 32, classes: int = 10) -> ir.Model:
    """MobileNetV2-style network: inverted residuals with depthwise convs and ReLU6."""
    b = GraphBuilder("mobilenetv2", seed=seed)
    x = b.relu6(b.batch_norm(b.conv(b.input("input", [BATCH, 3, size, size]), 16, 3)))
    # (expansion, out channels, repeats, first stride)
    for expansion, width, repeats, first_stride in [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2)]:
        for index in range(repeats):
            stride = first_stride if index == 0 else 1
            cin = b.channels[x]
            hidden = cin * expansion
            y = x
            if expansion != 1:
                y = b.relu6(b.batch_norm(b.conv(y, hidden, 1)))
            y = b.relu6(b.batch_norm(b.conv(y, hidden, 3, stride=stride, groups=hidden)))
            y = b.batch_norm(b.conv(y, width, 1))
            x = b.add(x, y) if stride == 1 and cin == width else y
    x = b.relu6(b.batch_norm(b.conv(x, 128, 1)))
    return _head(b, x, classes)


def vgg(seed: int = 0, size: int = 32, classes: int = 10) -> ir.Model:
    """VGG-style network: conv/BN/ReLU stacks, max pools, Flatten -> FC -> FC -> FC."""
    b = GraphBuilder("vgg", seed=seed)
    x = b.input("input", [BATCH, 3, size, size])
    for width, convs in [(32, 1), (64, 2), (128, 2)]:
        for _ in range(convs):
            x = b.relu(b.batch_norm(b.conv(x, width, 3)))
        x = b.max_pool(x)
    spatial = size // 8
    x = b.flatten(x, features=128 * spatial * spatial)
    x = b.relu(b.gemm(x, 256))
    x = b.relu(b.gemm(x, 256))
    b.output(b.gemm(x, classes), "logits")
    return b.build()


def repvgg(seed: int = 0, size: int = 32, classes: int = 10) -> ir.Model:
    """RepVGG-style train-time network: each block sums 3x3+BN, 1x1+BN and identity BN."""
    b = GraphBuilder("repvgg", seed=seed)
    x = b.input("input", [BATCH, 3, size, size])
    for width, repeats in [(32, 1), (48, 2), (96, 2)]:
        for index in range(repeats):
            stride = 2 if index == 0 else 1
            branch3 = b.batch_norm(b.conv(x, width, 3, stride=stride))
            branch1 = b.batch_norm(b.conv(x, width, 1, stride=stride, pads=[0, 0, 0, 0]))
            y = b.add(branch3, branch1)
            if stride == 1 and b.channels[x] == width:
                y = b.add(y, b.batch_norm(x))
            x = b.relu(y)
    return _head(b, x, classes)


def resnet50(seed: int = 0, size: int = 224, classes: int = 1000) -> ir.Model:
    """A ResNet-50-sized network (bottleneck blocks [3, 4, 6, 3], 25.6 M params)."""
    b = GraphBuilder("resnet50", seed=seed)
    x = b.input("input", [BATCH, 3, size, size])
    x = b.relu(b.batch_norm(b.conv(x, 64, 7, stride=2)))
    x = b.op("MaxPool", [x], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.relu(b.batch_norm(b.conv(x, width, 1, pads=[0, 0, 0, 0])))
            y = b.relu(b.batch_norm(b.conv(y, width, 3, stride=stride)))
            y = b.batch_norm(b.conv(y, width * 4, 1, pads=[0, 0, 0, 0]))
            shortcut = x
            if block == 0:
                shortcut = b.batch_norm(b.conv(x, width * 4, 1, stride=stride, pads=[0] * 4))
            x = b.relu(b.add(y, shortcut))
    return _head(b, x, classes)


FIXTURES = Path(__file__).parent / "fixtures"


def digits(seed: int = 0) -> ir.Model:
    """The trained digits CNN (``seed`` is ignored: the weights are the trained ones)."""
    from lightir.io import load

    return load(FIXTURES / "digits_cnn.onnx")


def digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    """The digits fixture's held-out images (float32 [N, 1, 8, 8], normalized) and labels."""
    with np.load(FIXTURES / "digits_test.npz") as data:
        return data["input"], data["label"]


def digits_calibration_path() -> Path:
    """The test split as a ``--calib`` file (its ``input`` array feeds the model)."""
    return FIXTURES / "digits_test.npz"


def accuracy(model: ir.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a classifier on ``images`` under onnxruntime."""
    from lightir.onnx_bridge import OrtModel

    session = OrtModel(model)
    name = session.input_names[0]
    logits = next(iter(session.run({name: images}).values()))
    return float((logits.argmax(axis=1) == labels).mean())


BUILDERS: dict[str, Callable[..., ir.Model]] = {
    "resnet": resnet,
    "mobilenetv2": mobilenetv2,
    "vgg": vgg,
    "repvgg": repvgg,
    "resnet50": resnet50,
    "digits": digits,
}
SMALL = ["resnet", "mobilenetv2", "vgg", "repvgg"]


def names() -> list[str]:
    """Every zoo model name."""
    return list(BUILDERS)


def build(name: str, seed: int = 0) -> ir.Model:
    """Build the zoo model ``name`` (deterministic for a given seed)."""
    if name not in BUILDERS:
        import difflib

        close = difflib.get_close_matches(name, BUILDERS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(BUILDERS)}"
        raise UsageError(f"zoo:{name}: no such zoo model; {hint}")
    model = BUILDERS[name](seed=seed)
    model.graph.name = model.graph.name or name
    return model
