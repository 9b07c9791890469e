"""Small realistic models built in code, with seeded weights and non-trivial BN statistics.

``lightir-opt zoo:NAME`` builds one in memory, so every example runs with no download. The
models have a dynamic batch dimension (``batch``) as exporters write them.

========== =============================================================================
resnet     ResNet-style: 3 stages of basic blocks with residual Adds, 1x1 downsample
mobilenetv2 MobileNetV2-style inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 project
vgg        VGG-style: conv/BN/ReLU stacks, max pools, Flatten and two hidden FC layers
repvgg     RepVGG train-time blocks: 3x3 conv+BN, 1x1 conv+BN and identity BN, summed
resnet50   ResNet-50-sized (bottlenecks [3, 4, 6, 3], 224x224, 25.6 M params): benchmarks
acnet      ACNet train-time blocks: 3x3, 1x3 and 3x1 conv+BN branches, summed
dbb        Diverse Branch Blocks: 3x3, 1x1, 1x1->AvgPool and 1x1->3x3 branches
mobileone  MobileOne blocks: k over-parameterized dw/1x1 branches with scale and skip BN
concatnet  Inception-style concat blocks and a DenseNet-style block (pruning across Concat)
repghost   RepGhost bottlenecks: depthwise conv + BN-identity added in feature space
ghostnet   GhostNet bottlenecks: ghost modules (1x1 conv and its depthwise copy, concatenated)
regnetx    RegNetX-200MF X blocks: 1x1, grouped 3x3 with a fixed group width of 8, 1x1, Adds
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


# --------------------------------------------------------------------------------------------
# Train-time reparameterizable blocks (RepVGG above) and their hand-written deploy forms. Each
# network: stem, a few blocks, GAP + Gemm head. ``deploy_NAME`` builds the inference form
# that reparameterization must reach (random weights: compare structure and speed, not
# outputs).


def _conv_bn(b: GraphBuilder, x: ir.Value, cout: int, kernel, **kw) -> ir.Value:
    return b.batch_norm(b.conv(x, cout, kernel, **kw))


def _plain_head(b: GraphBuilder, size: int, blocks, make_block, classes: int = 10) -> ir.Model:
    x = b.input("input", [BATCH, 3, size, size])
    x = b.relu(b.conv(x, blocks[0][0], 3, stride=2, bias=True))
    for width, stride in blocks:
        x = make_block(b, x, width, stride)
    return _head(b, x, classes)


ACNET_BLOCKS = [(32, 1), (48, 2), (48, 1), (64, 2)]


def acnet(seed: int = 0, size: int = 32) -> ir.Model:
    """ACNet: each block sums 3x3+BN, 1x3+BN and 3x1+BN branches (asymmetric kernels)."""

    def block(b, x, width, stride):
        square = _conv_bn(b, x, width, 3, stride=stride)
        wide = _conv_bn(b, x, width, (1, 3), stride=stride, pads=[0, 1, 0, 1])
        tall = _conv_bn(b, x, width, (3, 1), stride=stride, pads=[1, 0, 1, 0])
        return b.relu(b.add(b.add(square, wide), tall))

    return _plain_head(GraphBuilder("acnet", seed=seed), size, ACNET_BLOCKS, block)


def deploy_acnet(seed: int = 0, size: int = 32) -> ir.Model:
    """ACNet deploy form: one 3x3 Conv + Relu per block."""
    return _plain_head(GraphBuilder("acnet_deploy", seed=seed), size, ACNET_BLOCKS, _deploy_3x3)


def _deploy_3x3(b, x, width, stride):
    return b.relu(b.conv(x, width, 3, stride=stride, bias=True))


DBB_BLOCKS = [(32, 1), (48, 2), (48, 1)]


def dbb(seed: int = 0, size: int = 32) -> ir.Model:
    """Diverse Branch Block: 3x3+BN, 1x1+BN, 1x1 -> AvgPool -> BN, and 1x1 -> 3x3 -> BN.

    The 1x1 convs ahead of the padded AvgPool and 3x3 have no bias, so the ONNX graph is
    exactly mergeable (DBB's BN-and-pad layer serves the same purpose in PyTorch).
    """

    def block(b, x, width, stride):
        square = _conv_bn(b, x, width, 3, stride=stride)
        point = _conv_bn(b, x, width, 1, stride=stride, pads=[0] * 4)
        pooled = b.conv(x, width, 1, pads=[0] * 4)
        pooled = b.op(
            "AveragePool",
            [pooled],
            {
                "kernel_shape": [3, 3],
                "strides": [stride] * 2,
                "pads": [1] * 4,
                "count_include_pad": 1,
            },
        )
        pooled = b.batch_norm(pooled)
        seq = b.conv(x, width, 1, pads=[0] * 4)
        seq = _conv_bn(b, seq, width, 3, stride=stride)
        return b.relu(b.add(b.add(square, point), b.add(pooled, seq)))

    return _plain_head(GraphBuilder("dbb", seed=seed), size, DBB_BLOCKS, block)


def deploy_dbb(seed: int = 0, size: int = 32) -> ir.Model:
    """DBB deploy form: one 3x3 Conv + Relu per block."""
    return _plain_head(GraphBuilder("dbb_deploy", seed=seed), size, DBB_BLOCKS, _deploy_3x3)


MOBILEONE_BLOCKS = [(32, 1), (48, 2), (48, 1), (64, 2)]
MOBILEONE_K = 3


def mobileone(seed: int = 0, size: int = 32) -> ir.Model:
    """MobileOne: a depthwise stage then a pointwise stage, each summed, each with ReLU.

    Depthwise stage: k x (dw 3x3 + BN), dw 1x1 + BN (scale branch), skip BN. Pointwise stage:
    k x (1x1 + BN), skip BN.
    """

    def block(b, x, width, stride):
        cin = b.channels[x]
        terms = [_conv_bn(b, x, cin, 3, stride=stride, groups=cin) for _ in range(MOBILEONE_K)]
        terms.append(_conv_bn(b, x, cin, 1, stride=stride, groups=cin, pads=[0] * 4))
        if stride == 1:
            terms.append(b.batch_norm(x))
        y = b.relu(_sum(b, terms))
        terms = [_conv_bn(b, y, width, 1, pads=[0] * 4) for _ in range(MOBILEONE_K)]
        if width == cin:
            terms.append(b.batch_norm(y))
        return b.relu(_sum(b, terms))

    return _plain_head(GraphBuilder("mobileone", seed=seed), size, MOBILEONE_BLOCKS, block)


def deploy_mobileone(seed: int = 0, size: int = 32) -> ir.Model:
    """MobileOne deploy form: dw 3x3 Conv + Relu, 1x1 Conv + Relu per block."""

    def block(b, x, width, stride):
        cin = b.channels[x]
        y = b.relu(b.conv(x, cin, 3, stride=stride, groups=cin, bias=True))
        return b.relu(b.conv(y, width, 1, pads=[0] * 4, bias=True))

    return _plain_head(GraphBuilder("mobileone_deploy", seed=seed), size, MOBILEONE_BLOCKS, block)


def _sum(b: GraphBuilder, terms: list[ir.Value]) -> ir.Value:
    total = terms[0]
    for term in terms[1:]:
        total = b.add(total, term)
    return total


REPGHOST_BLOCKS = [(32, 1), (32, 1), (48, 2), (48, 1)]


def repghost(seed: int = 0, size: int = 32) -> ir.Model:
    """RepGhost bottleneck: depthwise conv plus BN-identity, added in feature space.

    1x1 primary conv, then a depthwise 3x3 + BN added to a BN of its own input, ReLU, a 1x1
    projection + BN, and a residual.
    """

    def block(b, x, width, stride):
        cin = b.channels[x]
        hidden = 2 * cin
        y = b.relu(_conv_bn(b, x, hidden, 1, pads=[0] * 4))
        cheap = _conv_bn(b, y, hidden, 3, groups=hidden)
        y = b.relu(b.add(cheap, b.batch_norm(y)))
        if stride == 2:
            y = _conv_bn(b, y, hidden, 3, stride=2, groups=hidden)
        y = _conv_bn(b, y, width, 1, pads=[0] * 4)
        return b.add(x, y) if stride == 1 and width == cin else y

    return _plain_head(GraphBuilder("repghost", seed=seed), size, REPGHOST_BLOCKS, block)


def deploy_repghost(seed: int = 0, size: int = 32) -> ir.Model:
    """RepGhost deploy form: 1x1 Conv+Relu, dw 3x3 Conv+Relu, (dw stride 2), 1x1 Conv, Add."""

    def block(b, x, width, stride):
        cin = b.channels[x]
        hidden = 2 * cin
        y = b.relu(b.conv(x, hidden, 1, pads=[0] * 4, bias=True))
        y = b.relu(b.conv(y, hidden, 3, groups=hidden, bias=True))
        if stride == 2:
            y = b.conv(y, hidden, 3, stride=2, groups=hidden, bias=True)
        y = b.conv(y, width, 1, pads=[0] * 4, bias=True)
        return b.add(x, y) if stride == 1 and width == cin else y

    return _plain_head(GraphBuilder("repghost_deploy", seed=seed), size, REPGHOST_BLOCKS, block)


def deploy_repvgg(seed: int = 0, size: int = 32, classes: int = 10) -> ir.Model:
    """RepVGG deploy form: one 3x3 Conv + Relu per block."""
    b = GraphBuilder("repvgg_deploy", seed=seed)
    x = b.input("input", [BATCH, 3, size, size])
    for width, repeats in [(32, 1), (48, 2), (96, 2)]:
        for index in range(repeats):
            x = b.relu(b.conv(x, width, 3, stride=2 if index == 0 else 1, bias=True))
    return _head(b, x, classes)


DEPLOY_FORMS: dict[str, Callable[..., ir.Model]] = {
    "repvgg": deploy_repvgg,
    "acnet": deploy_acnet,
    "dbb": deploy_dbb,
    "mobileone": deploy_mobileone,
    "repghost": deploy_repghost,
}


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


def concatnet(seed: int = 0, size: int = 32, classes: int = 10) -> ir.Model:
    """Concat-based network for pruning across Concat.

    Inception-style blocks (1x1 and 3x3 branches concatenated) and a DenseNet-style block (a
    layer's input concatenated with its output).
    """
    b = GraphBuilder("concatnet", seed=seed)
    x = _stem(b, 24, size)
    for width in (16, 24):
        point = b.relu(b.batch_norm(b.conv(x, width, 1, pads=[0] * 4)))
        spatial = b.relu(b.batch_norm(b.conv(x, width, 3)))
        x = b.op("Concat", [point, spatial], {"axis": 1}, channels=2 * width)
        x = b.max_pool(x)
    grown = b.relu(b.batch_norm(b.conv(x, 16, 3)))
    x = b.op("Concat", [x, grown], {"axis": 1}, channels=b.channels[x] + 16)
    x = b.relu(b.batch_norm(b.conv(x, 64, 1, pads=[0] * 4)))
    return _head(b, x, classes)


def _silu(b: GraphBuilder, x: ir.Value) -> ir.Value:
    """SiLU as exporters write it: x * Sigmoid(x)."""
    return b.op("Mul", [x, b.op("Sigmoid", [x])])


def _conv_bn_silu(b: GraphBuilder, x: ir.Value, cout: int, kernel: int = 1, stride: int = 1):
    return _silu(b, b.batch_norm(b.conv(x, cout, kernel, stride=stride)))


def _split(b: GraphBuilder, x: ir.Value, sizes: list[int]) -> list[ir.Value]:
    """Split on axis 1 with explicit sizes: an input from opset 13, an attribute before."""
    if b.opset >= 13:
        node = b.op(
            "Split",
            [x, b.initializer(np.array(sizes, np.int64), "split")],
            {"axis": 1},
            num_outputs=len(sizes),
        ).producer()
    else:
        node = b.op("Split", [x], {"axis": 1, "split": sizes}, num_outputs=len(sizes)).producer()
    for out, size in zip(node.outputs, sizes):
        b.channels[out] = size
    return list(node.outputs)


def _c2f(b: GraphBuilder, x: ir.Value, cout: int, blocks: int = 1) -> ir.Value:
    """YOLOv8's C2f: cv1 -> Split(c, c) -> bottlenecks on the second half -> Concat -> cv2."""
    hidden = cout // 2
    parts = _split(b, _conv_bn_silu(b, x, 2 * hidden), [hidden, hidden])
    y = parts[-1]
    for _ in range(blocks):
        inner = _conv_bn_silu(b, _conv_bn_silu(b, y, hidden, 3), hidden, 3)
        y = b.add(y, inner)
        parts.append(y)
    joined = b.op("Concat", parts, {"axis": 1}, channels=hidden * len(parts))
    return _conv_bn_silu(b, joined, cout)


def _sppf(b: GraphBuilder, x: ir.Value, cout: int) -> ir.Value:
    """YOLOv8's SPPF: cv1, three chained 5x5 max pools, Concat of the four, cv2."""
    hidden = b.channels[x] // 2
    y = _conv_bn_silu(b, x, hidden)
    pooled = [y]
    for _ in range(3):
        pooled.append(b.op("MaxPool", [pooled[-1]], {"kernel_shape": [5, 5], "pads": [2] * 4}))
    return _conv_bn_silu(b, b.op("Concat", pooled, {"axis": 1}, channels=4 * hidden), cout)


def yolo(seed: int = 0, size: int = 64, classes: int = 8, opset: int = 17) -> ir.Model:
    """A YOLOv8-style detector in miniature: C2f and SPPF blocks, a box + class-score head.

    The output is ``[N, 4 + classes, cells]``: box coordinates in pixels (0..size) and
    Sigmoid class scores (0..1) concatenated on axis 1, as YOLOv8's ONNX export writes it.
    ``opset < 13`` writes Split sizes as an attribute. Weights are seeded, not trained.
    """
    b = GraphBuilder("yolo", seed=seed, opset=opset)
    x = b.input("images", [BATCH, 3, size, size])
    x = _conv_bn_silu(b, x, 16, 3, 2)
    x = _c2f(b, _conv_bn_silu(b, x, 32, 3, 2), 32)
    x = _c2f(b, _conv_bn_silu(b, x, 64, 3, 2), 64, blocks=2)
    x = _sppf(b, x, 64)
    cells = (size // 8) ** 2
    box = b.conv(_conv_bn_silu(b, x, 32, 3), 4, 1, bias=True)
    box = b.op("Mul", [b.op("Sigmoid", [box]), b.initializer(np.array(size, np.float32), "s")])
    score = b.op("Sigmoid", [b.conv(_conv_bn_silu(b, x, 32, 3), classes, 1, bias=True)])
    head = b.op("Concat", [box, score], {"axis": 1}, channels=4 + classes)
    shape = b.initializer(np.array([0, 4 + classes, cells], np.int64), "shape")
    b.output(b.op("Reshape", [head, shape]), "output0")
    return b.build()


def yolo_opset12(seed: int = 0) -> ir.Model:
    """:func:`yolo` at opset 12: Split sizes as an attribute."""
    return yolo(seed=seed, opset=12)


def _ghost_module(b: GraphBuilder, x: ir.Value, out: int, relu: bool) -> ir.Value:
    """GhostNet's module: a 1x1 conv's channels and their depthwise copy, concatenated.

    The depthwise 3x3 "cheap operation" makes the second half of the channels.
    """
    half = out // 2
    primary = b.batch_norm(b.conv(x, half, 1))
    primary = b.relu(primary) if relu else primary
    cheap = b.batch_norm(b.conv(primary, half, 3, groups=half))
    cheap = b.relu(cheap) if relu else cheap
    both = b.op("Concat", [primary, cheap], {"axis": 1}, channels=out)
    # The reference code returns ``out[:, :oup]``, which exporters write as a Slice.
    starts, ends, axes = (b.initializer(np.array([v], np.int64), "slice") for v in (0, out, 1))
    return b.op("Slice", [both, starts, ends, axes], channels=out)


GHOSTNET_BLOCKS = [
    (16, 16, 1),
    (48, 24, 2),
    (72, 24, 1),
    (72, 40, 2),
    (120, 40, 1),
    (240, 80, 2),
    (200, 80, 1),
    (480, 112, 1),
    (672, 160, 2),
    (960, 160, 1),
]


def ghostnet(seed: int = 0, size: int = 64, classes: int = 10) -> ir.Model:
    """GhostNet-style (Han et al. 2020) bottlenecks, widths of GhostNet 1.0 without SE.

    Ghost module (expand, Relu) -> [dw 3x3 stride 2] -> ghost module (project) + shortcut
    (identity, or dw 3x3 + 1x1 when the shape changes).
    """
    b = GraphBuilder("ghostnet", seed=seed)
    x = b.input("input", [BATCH, 3, size, size])
    x = b.relu(_conv_bn(b, x, 16, 3, stride=2))
    for hidden, out, stride in GHOSTNET_BLOCKS:
        y = _ghost_module(b, x, hidden, relu=True)
        if stride == 2:
            y = _conv_bn(b, y, hidden, 3, stride=2, groups=hidden)
        y = _ghost_module(b, y, out, relu=False)
        shortcut = x
        if stride != 1 or b.channels[x] != out:
            cin = b.channels[x]
            shortcut = _conv_bn(b, _conv_bn(b, x, cin, 3, stride=stride, groups=cin), out, 1)
        x = b.add(y, shortcut)
    x = b.relu(_conv_bn(b, x, 960, 1))
    return _head(b, x, classes)


REGNETX_STAGES = [(24, 1), (56, 1), (152, 4), (368, 7)]  # RegNetX-200MF widths, depths
REGNETX_GROUP_WIDTH = 8


def regnetx(seed: int = 0, size: int = 64, classes: int = 10) -> ir.Model:
    """RegNetX-200MF-style (Radosavovic et al. 2020) X blocks.

    1x1 -> grouped 3x3 with a fixed group width of 8 -> 1x1, with residual Adds and 1x1
    stride-2 projections.
    """
    b = GraphBuilder("regnetx", seed=seed)
    x = b.input("input", [BATCH, 3, size, size])
    x = b.relu(_conv_bn(b, x, 32, 3, stride=2))
    for width, depth in REGNETX_STAGES:
        for block in range(depth):
            stride = 2 if block == 0 else 1
            y = b.relu(_conv_bn(b, x, width, 1))
            y = b.relu(_conv_bn(b, y, width, 3, stride=stride, groups=width // REGNETX_GROUP_WIDTH))
            y = _conv_bn(b, y, width, 1)
            shortcut = x
            if stride != 1 or b.channels[x] != width:
                shortcut = _conv_bn(b, x, width, 1, stride=stride, pads=[0] * 4)
            x = b.relu(b.add(y, shortcut))
    return _head(b, x, classes)


BUILDERS: dict[str, Callable[..., ir.Model]] = {
    "yolo": yolo,
    "yolo-opset12": yolo_opset12,
    "resnet": resnet,
    "mobilenetv2": mobilenetv2,
    "vgg": vgg,
    "repvgg": repvgg,
    "resnet50": resnet50,
    "digits": digits,
    "acnet": acnet,
    "dbb": dbb,
    "mobileone": mobileone,
    "repghost": repghost,
    "concatnet": concatnet,
    "ghostnet": ghostnet,
    "regnetx": regnetx,
}
REPARAM = ["repvgg", "acnet", "dbb", "mobileone", "repghost"]
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
