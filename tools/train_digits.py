"""Train the small CNN fixture on scikit-learn's digits and export it with its test split.

Writes lightir/fixtures/digits_cnn.onnx (train-time form: Conv -> BatchNormalization -> Relu,
two FC layers) and lightir/fixtures/digits_test.npz (``input``: float32 [N, 1, 8, 8], already
normalized; ``label``: int64 [N]). The dataset ships inside scikit-learn, so nothing is
downloaded.

    pip install torch==2.13.0 scikit-learn
    python tools/train_digits.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

FIXTURES = Path(__file__).resolve().parents[1] / "lightir" / "fixtures"
MEAN, STD = 4.88, 6.02  # of the digits' pixel values (0..16), from the training split


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 48), *block(48, 48)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(48 * 4 * 4, 96), nn.ReLU(), nn.Dropout(0.2), nn.Linear(96, 10)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    digits = load_digits()
    x = ((digits.images.astype(np.float32) - MEAN) / STD)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=args.seed, stratify=y
    )
    model = DigitsCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 64):
            index = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(xt[index]), yt[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    print(f"test accuracy {accuracy:.4f} on {len(y_test)} samples")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / "digits_cnn.onnx"
    torch.onnx.export(
        model,
        (torch.from_numpy(x_test[:1]),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
    )
    np.savez_compressed(FIXTURES / "digits_test.npz", input=x_test, label=y_test)
    print(f"wrote {path} ({path.stat().st_size} bytes) and digits_test.npz")


if __name__ == "__main__":
    main()
