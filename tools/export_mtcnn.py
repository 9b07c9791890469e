"""Export facenet-pytorch's trained MTCNN (P-, R- and O-Net) to ONNX for the corpus.

The weights are the state dicts shipped in the ``facenet-pytorch==2.6.0`` wheel (pinned and
checked by :mod:`lightir.testing.corpus`); the modules below are facenet-pytorch's
architecture (``facenet_pytorch/models/mtcnn.py``), written out so the wheel's torchvision
import is not needed. The ONNX files go to ``$LIGHTIR_CACHE/corpus/exported/mtcnn`` (never
committed), where ``corpus.path("mtcnn-pnet")`` finds them.

    pip install torch==2.13.0
    python tools/export_mtcnn.py
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lightir.testing import corpus


class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x):
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x)))))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


NETS = {
    "pnet": (PNet, (1, 3, 64, 64), ["boxes", "prob"], {0: "batch", 2: "height", 3: "width"}),
    "rnet": (RNet, (1, 3, 24, 24), ["boxes", "prob"], {0: "batch"}),
    "onet": (ONet, (1, 3, 48, 48), ["boxes", "landmarks", "prob"], {0: "batch"}),
}


def export(name: str, opset: int) -> None:
    module_type, shape, outputs, dynamic = NETS[name]
    weights = corpus.member_path("facenet-pytorch", *corpus.MTCNN_WEIGHTS[name])
    module = module_type().eval()
    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    target = corpus.cache_dir() / corpus.MODELS[f"mtcnn-{name}"].member
    target.parent.mkdir(parents=True, exist_ok=True)
    axes = {"image": dynamic, **{out: {0: "batch"} for out in outputs}}
    torch.onnx.export(
        module,
        (torch.zeros(shape),),
        str(target),
        input_names=["image"],
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=opset,
        dynamo=False,
    )
    print(f"mtcnn-{name}: {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opset", type=int, default=13)
    args = parser.parse_args()
    for name in NETS:
        export(name, args.opset)


if __name__ == "__main__":
    main()
