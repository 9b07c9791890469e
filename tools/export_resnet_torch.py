"""Export a small ResNet (basic blocks with residual adds) from PyTorch (test fixtures).

Stem conv + BN + ReLU + max-pool, then three stages of two basic blocks (conv-BN-ReLU-conv-BN
plus the shortcut, then ReLU). The first block of stages 2 and 3 halves the resolution and
projects its shortcut with a strided 1x1 conv + BN, as in torchvision's ResNet. Weights are
random; BN statistics are made non-trivial by a few training-mode forward passes. Exported in
eval mode with BatchNormalization kept (no constant folding), so lightir's passes have work.

    pip install torch==2.13.0
    python tools/export_resnet_torch.py     # writes tests/fixtures/resnet_torch{,_dynamo}.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from export_repvgg_torch import export, warm_bn_statistics
from torch import nn

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def conv_bn(cin, cout, kernel, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self, widths=(8, 16, 32), classes=10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, widths[0], 3, 1), nn.ReLU(), nn.MaxPool2d(2))
        blocks, cin = [], widths[0]
        for stage, width in enumerate(widths):
            blocks += [BasicBlock(cin, width, 1 if stage == 0 else 2), BasicBlock(width, width, 1)]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        features = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = warm_bn_statistics(ResNet())
    args.out.mkdir(parents=True, exist_ok=True)
    for exporter, name in (("torchscript", "resnet_torch"), ("dynamo", "resnet_torch_dynamo")):
        path = args.out / f"{name}.onnx"
        export(model, path, exporter)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
