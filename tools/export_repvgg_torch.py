"""Export a RepVGG network from PyTorch in train-time and deploy form (test fixtures).

The train-time form has, per block, a 3x3 conv + BN, a 1x1 conv + BN and (where shapes
allow) an identity BN, summed, then ReLU. ``switch_to_deploy`` is the usual per-repository
PyTorch conversion (as in RepVGG's reference code) that fuses each block into one 3x3 conv.
Both forms are exported with PyTorch's ONNX exporter; the weights are random but BN
statistics are made non-trivial by a few training-mode forward passes.

    pip install torch==2.13.0
    python tools/export_repvgg_torch.py            # writes tests/fixtures/repvgg_torch_*.onnx
    python tools/export_repvgg_torch.py --exporter dynamo --out /tmp/x
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def conv_bn(cin, cout, kernel, stride, padding, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class RepVGGBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, groups=1):
        super().__init__()
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.dense = conv_bn(cin, cout, 3, stride, 1, groups)
        self.point = conv_bn(cin, cout, 1, stride, 0, groups)
        self.groups, self.cin, self.deploy = groups, cin, None

    def forward(self, x):
        if self.deploy is not None:
            return torch.relu(self.deploy(x))
        out = self.dense(x) + self.point(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return torch.relu(out)

    @staticmethod
    def _fuse(kernel, bn):
        std = (bn.running_var + bn.eps).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return kernel * t, bn.bias - bn.running_mean * bn.weight / std

    def switch_to_deploy(self):
        k3, b3 = self._fuse(self.dense[0].weight, self.dense[1])
        k1, b1 = self._fuse(self.point[0].weight, self.point[1])
        kernel = k3 + nn.functional.pad(k1, [1, 1, 1, 1])
        bias = b3 + b1
        if self.identity is not None:
            per_group = self.cin // self.groups
            eye = torch.zeros(self.cin, per_group, 3, 3)
            for i in range(self.cin):
                eye[i, i % per_group, 1, 1] = 1
            ki, bi = self._fuse(eye, self.identity)
            kernel, bias = kernel + ki, bias + bi
        conv = self.dense[0]
        self.deploy = nn.Conv2d(
            conv.in_channels, conv.out_channels, 3, conv.stride, 1, groups=self.groups, bias=True
        )
        self.deploy.weight.data, self.deploy.bias.data = kernel.detach(), bias.detach()
        del self.dense, self.point, self.identity
        self.identity = None


class RepVGG(nn.Module):
    def __init__(self, widths=(16, 32, 48), repeats=(1, 2, 2), classes=10):
        super().__init__()
        blocks, cin = [], 3
        for width, count in zip(widths, repeats):
            for index in range(count):
                groups = 2 if index == 1 and width % 2 == 0 else 1
                blocks.append(RepVGGBlock(cin, width, 2 if index == 0 else 1, groups))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.blocks(x).mean(dim=(2, 3)))


def warm_bn_statistics(model):
    """Non-trivial BN running statistics from a few training-mode passes; returns it in eval."""
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(8, 3, 32, 32) * 1.5 + 0.3)
    return model.eval()


def export(model, path, exporter):
    example = torch.randn(1, 3, 32, 32)
    kwargs = dict(
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    if exporter == "dynamo":
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, **kwargs)
    else:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            **kwargs,
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = warm_bn_statistics(RepVGG())
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.exporter == "torchscript" else "_dynamo"
    train_path = args.out / f"repvgg_torch_train{suffix}.onnx"
    export(model, train_path, args.exporter)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for block in model.blocks:
            block.switch_to_deploy()
        after = model(x)
    print(f"PyTorch switch_to_deploy max abs difference: {(before - after).abs().max():.2e}")
    deploy_path = args.out / f"repvgg_torch_deploy{suffix}.onnx"
    export(model, deploy_path, args.exporter)
    for path in (train_path, deploy_path):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
