"""--calib DIR: calibration from a folder of images, equal to the .npz a user would write."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

import lightir
from lightir import zoo
from lightir.data import input_specs
from lightir.images import Preprocess, load_images

Image = pytest.importorskip("PIL.Image")

MEAN, STD = 0.3, 0.35


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The digits test split as 8x8 grayscale PNGs in one subfolder per label."""
    images, labels = zoo.digits_test_split()
    root = tmp_path_factory.mktemp("digits")
    low, high = images.min(), images.max()
    pixels = np.round((images[:, 0] - low) / (high - low) * 255).astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, labels)):
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray(image, mode="L").save(root / str(label) / f"{i:04d}.png")
    order = sorted(range(len(labels)), key=lambda i: f"{labels[i]}/{i:04d}.png")
    scaled = pixels[order].astype(np.float32) / np.float32(255)  # as torchvision does
    expected = ((scaled - np.float32(MEAN)) / np.float32(STD))[:, None]
    return root, expected, labels[order]


def test_a_folder_reads_as_the_equivalent_npz(folder):
    root, expected, labels = folder
    spec = input_specs(zoo.build("digits"))[0]
    data = load_images(root, spec, f"mean={MEAN},std={STD}")
    np.testing.assert_array_equal(data.arrays["input"], expected)
    np.testing.assert_array_equal(data.labels, labels)  # subfolder names are the labels
    assert Preprocess.parse("resize=256,crop=224x200,order=bgr").crop == (224, 200)


def test_the_cli_gives_the_same_model_from_images_as_from_the_npz(folder, tmp_path):
    root, expected, labels = folder
    npz = tmp_path / "same.npz"
    np.savez(npz, input=expected, __labels__=labels)
    outputs = {}
    for name, calib in (("dir", [root, "--preprocess", f"mean={MEAN},std={STD}"]), ("npz", [npz])):
        out = tmp_path / f"{name}.onnx"
        done = cli("zoo:digits", "-p", "int8", "--calib", *calib, "--metric", "top1", "-o", out)
        assert done.returncode == 0, done.stderr
        outputs[name] = {t.name: t.raw_data for t in onnx.load(out).graph.initializer}
    assert outputs["dir"] == outputs["npz"]


def test_bad_images_and_sizes_are_one_line_errors(folder, tmp_path):
    root, _, _ = folder
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    done = cli("zoo:digits", "-p", "fold-bn", "--calib", broken)
    assert done.returncode == 2 and "cannot read image" in done.stderr and "a.png" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = cli("zoo:digits", "-p", "fold-bn", "--calib", root, "--preprocess", "mean=1:2")
    assert done.returncode == 2
    assert "--preprocess mean: 2 values for an input with 1 channel(s); give 1" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = cli("zoo:digits", "-p", "fold-bn", "--calib", empty)
    assert done.returncode == 2 and "no images" in done.stderr
    spec = input_specs(zoo.build("resnet"))[0]  # 3 channels, 32x32: grayscale files convert
    data = load_images(root, spec, "resize=40")
    assert data.arrays["input"].shape == (450, 3, 32, 32)
    dynamic = lightir.data.InputSpec("x", np.dtype(np.float32), ("N", 3, "H", "W"))
    with pytest.raises(lightir.InputError, match="crop=HxW"):
        load_images(root, dynamic)


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lightir.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_preprocessing_is_read_from_the_model_and_written_into_the_result(folder, tmp_path):
    """A model that states its preprocessing needs no --preprocess; lightir's output states
    the one it was calibrated with, and a key on the command line overrides the model's."""
    root, expected, labels = folder
    stated = zoo.build("digits")
    stated.metadata_props["lightir.preprocess"] = f"mean={MEAN},std={STD}"
    first = lightir.optimize(stated, "int8", calib=root)
    assert f"'mean={MEAN:g},std={STD:g}': mean, std from the model's metadata" in (
        first.report.inputs
    )
    plain = lightir.optimize("zoo:digits", "int8", calib=root, preprocess=f"mean={MEAN},std={STD}")
    weights = {v.name: v.const_value.tobytes() for v in plain.model.graph.initializers.values()}
    assert weights == {
        v.name: v.const_value.tobytes() for v in first.model.graph.initializers.values()
    }
    assert plain.model.metadata_props["lightir.preprocess"] == f"mean={MEAN:g},std={STD:g}"
    # The command line wins key by key.
    _, origin = Preprocess.resolve("std=1", stated.metadata_props)
    assert origin == "mean from the model's metadata lightir.preprocess; std from --preprocess"


def test_onnx_image_metadata_gives_channel_order_and_range():
    spec, origin = Preprocess.resolve(
        None, {"Image.BitmapPixelFormat": "Bgr8", "image.nominalpixelrange": "NORMALIZED_1_1"}
    )
    assert (spec.order, spec.scale, spec.mean) == ("BGR", 127.5, (1.0,))  # x / 127.5 - 1
    assert "ONNX Image metadata" in origin
    spec, _ = Preprocess.resolve(None, {"Image.NominalPixelRange": "NominalRange_16_235"})
    assert spec == Preprocess()  # video range: not expressible, left to --preprocess
