"""Calibration data from a folder of images: ``--calib DIR --preprocess SPEC``.

A deployment engineer has images, not arrays. :func:`load_images` reads JPEG / PNG / BMP /
WebP files (a directory, searched recursively, or a text file with one path per line) and
turns them into the model's one image input, the way the model's own preprocessing does:

1. decode (Pillow), as RGB, or as grayscale when the input has one channel;
2. ``resize=N``: the shorter side to N pixels (bilinear), keeping the aspect ratio, then a
   center crop to the input's height and width (``crop=HxW`` when they are dynamic); without
   ``resize`` the image is resized straight to the crop size;
3. ``scale=255`` (default): pixel values divided by it; then ``(x - mean) / std`` per channel
   (``mean=0.485:0.456:0.406,std=0.229:0.224:0.225`` for ImageNet; defaults 0 and 1);
4. ``order=RGB`` (default) or ``BGR``; ``layout`` ``NCHW`` or ``NHWC`` (default: read from
   the input's shape, channels where the 1 or 3 is); the input's dtype (a uint8 input gets
   the resized pixels, unscaled).

When every image sits in a subfolder, the folder is the label, as torchvision's
``ImageFolder`` does: the ``__labels__`` of a ``top1`` metric (folder names that are all
integers are those integers, else the sorted names' index). Files are read in sorted path
order, so a folder and the equivalent ``.npz`` give the same rows. Pillow is an optional
extra: ``pip install 'lightir[images]'``.

The model's own metadata is read first (:func:`from_metadata`): ``lightir.preprocess`` (which
lightir writes into every model it optimized from images, so the result says how to feed
it), else ONNX's image metadata (``Image.BitmapPixelFormat``, ``Image.NominalPixelRange``).
Each key given with ``--preprocess`` overrides it; the report's inputs line says which key
came from where.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightir.data import CalibrationData, InputSpec
from lightir.errors import InputError, UsageError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Preprocess:
    """How images become the model's input (see the module docstring)."""

    resize: int | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 255.0
    order: str = "RGB"
    layout: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> Preprocess:
        """``resize=256,crop=224x224,mean=0.485:0.456:0.406,std=...,order=BGR,layout=NHWC``."""
        return cls.build(fields(text))

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> Preprocess:
        """From parsed keys (:func:`fields`), checked."""
        spec = cls(**values)
        if spec.order not in ("RGB", "BGR") or spec.layout not in (None, "NCHW", "NHWC"):
            raise UsageError("--preprocess: order is RGB or BGR, layout NCHW or NHWC")
        if any(s == 0 for s in spec.std) or spec.scale <= 0:
            raise UsageError("--preprocess: std and scale must be non-zero")
        return spec

    @classmethod
    def resolve(
        cls, text: str | None, metadata: Mapping[str, str] | None = None
    ) -> tuple[Preprocess, str]:
        """The preprocessing to use, and a line saying where it came from.

        The model's metadata first (:func:`from_metadata`), each key given on the command
        line over it.
        """
        stated, where = from_metadata(metadata or {})
        given = fields(text)
        spec = cls.build({**stated, **given})
        origin = []
        if stated:
            kept = sorted(set(stated) - set(given))
            if kept:
                origin.append(f"{', '.join(kept)} from the model's {where}")
        if given:
            origin.append(f"{', '.join(sorted(given))} from --preprocess")
        return spec, "; ".join(origin) or "defaults"

    def text(self) -> str:
        """The ``--preprocess`` text that gives this spec (stored in ``lightir.preprocess``)."""
        default = Preprocess()
        parts = []
        for key in ("resize", "crop", "mean", "std", "scale", "order", "layout"):
            value = getattr(self, key)
            if value == getattr(default, key):
                continue
            if key == "crop":
                value = f"{value[0]}x{value[1]}"
            elif key in ("mean", "std"):
                value = ":".join(f"{v:g}" for v in value)
            elif key == "scale":
                value = f"{value:g}"
            parts.append(f"{key}={value}")
        return ",".join(parts)


# The key lightir writes the preprocessing into (a --preprocess text) and reads it back from.
PREPROCESS_KEY = "lightir.preprocess"
# ONNX's image metadata (onnx/docs/MetadataProps.md): keys and values case-insensitive.
_PIXEL_ORDER = {"rgb8": "RGB", "rgba8": "RGB", "bgr8": "BGR", "bgra8": "BGR"}
_PIXEL_RANGE = {
    "nominalrange_0_255": {"scale": 1.0},
    "normalized_0_1": {"scale": 255.0},
    "normalized_1_1": {"scale": 127.5, "mean": (1.0,)},
}


def fields(text: str | None) -> dict[str, Any]:
    """The keys of a ``--preprocess`` text, parsed (not yet checked together)."""
    values: dict[str, Any] = {}
    if not text:
        return values
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not value:
            raise UsageError(f"--preprocess {item!r}: give KEY=VALUE")
        try:
            if key == "resize":
                values[key] = int(value)
            elif key == "crop":
                h, _, w = value.lower().partition("x")
                values[key] = (int(h), int(w or h))
            elif key in ("mean", "std"):
                values[key] = tuple(float(v) for v in value.split(":"))
            elif key == "scale":
                values[key] = float(value)
            elif key in ("order", "layout"):
                values[key] = value.upper()
            else:
                raise UsageError(
                    f"--preprocess {key}: unknown key; use resize, crop, mean, std, scale, "
                    "order or layout"
                )
        except ValueError as exc:
            raise UsageError(f"--preprocess {item!r}: {exc}") from exc
    return values


def from_metadata(metadata: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The preprocessing a model's ``metadata_props`` state, and which convention said so.

    ``lightir.preprocess`` (lightir writes it when ``--preprocess`` was given, so a model it
    wrote says how to feed it), else ONNX's image metadata: ``Image.BitmapPixelFormat``
    (``Rgb8`` / ``Bgr8``, with or without alpha: the channel order) and
    ``Image.NominalPixelRange`` (``NominalRange_0_255``, ``Normalized_0_1``,
    ``Normalized_1_1``: the scale and offset). A value it cannot express (video range
    16-235, a 1-channel format) is left to the command line.
    """
    lower = {key.lower(): value for key, value in metadata.items()}
    if PREPROCESS_KEY in lower:
        try:
            return fields(lower[PREPROCESS_KEY]), f"metadata {PREPROCESS_KEY}"
        except UsageError as exc:
            raise InputError(f"the model's {PREPROCESS_KEY} metadata: {exc}") from exc
    values: dict[str, Any] = {}
    order = _PIXEL_ORDER.get(lower.get("image.bitmappixelformat", "").strip().lower())
    if order:
        values["order"] = order
    values.update(_PIXEL_RANGE.get(lower.get("image.nominalpixelrange", "").strip().lower(), {}))
    return values, "ONNX Image metadata"


def image_files(source: str | Path) -> tuple[list[Path], np.ndarray | None]:
    """The image paths of a directory (sorted, recursive) or a list file, and folder labels."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not files:
            raise InputError(
                f"--calib {source}: no images ({', '.join(EXTENSIONS)}) in this folder"
            )
        folders = [p.parent for p in files]
        if all(folder != source for folder in folders):
            names = sorted({folder.relative_to(source).parts[0] for folder in folders})
            if all(name.isdigit() for name in names):
                index = {name: int(name) for name in names}
            else:
                index = {name: i for i, name in enumerate(names)}
            labels = np.array([index[p.relative_to(source).parts[0]] for p in files], np.int64)
            return files, labels
        return files, None
    if source.is_file():
        lines = [line.strip() for line in source.read_text().splitlines()]
        files = [(source.parent / line) for line in lines if line and not line.startswith("#")]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise InputError(f"--calib {source}: {missing[0]} does not exist")
        if not files:
            raise InputError(f"--calib {source}: the list names no image")
        return files, None
    raise InputError(f"--calib {source}: no such file or folder")


def load_images(
    source: str | Path, spec: InputSpec, preprocess: Preprocess | str | None = None
) -> CalibrationData:
    """The images of ``source`` as calibration data for the model input ``spec``.

    ``preprocess``: a spec, or a ``--preprocess`` text (without the model's metadata; the
    pass manager resolves both with :meth:`Preprocess.resolve`).
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise UsageError(
            f"--calib {source}: reading images needs Pillow: pip install 'lightir[images]'"
        ) from exc
    pre = preprocess if isinstance(preprocess, Preprocess) else Preprocess.parse(preprocess)
    if len(spec.shape) != 4:
        raise InputError(
            f"--calib {source}: input '{spec.name}' has shape {spec.shape}, not an image batch "
            "(N, C, H, W) or (N, H, W, C); give a .npz"
        )
    layout = pre.layout or (
        "NHWC" if spec.shape[3] in (1, 3) and spec.shape[1] not in (1, 3) else "NCHW"
    )
    channels = spec.shape[1] if layout == "NCHW" else spec.shape[3]
    height, width = (spec.shape[2], spec.shape[3]) if layout == "NCHW" else spec.shape[1:3]
    if pre.crop is not None:
        height, width = pre.crop
    if not all(isinstance(d, int) for d in (height, width, channels)):
        raise InputError(
            f"--calib {source}: input '{spec.name}' has dynamic size {spec.shape}; give "
            "--preprocess crop=HxW (and the channel count must be static)"
        )
    if channels not in (1, 3):
        raise InputError(
            f"--calib {source}: input '{spec.name}' has {channels} channels; images give 1 or 3"
        )
    for name, values in (("mean", pre.mean), ("std", pre.std)):
        if len(values) not in (1, channels):
            counts = "1" if channels == 1 else f"1 or {channels}"
            raise UsageError(
                f"--preprocess {name}: {len(values)} values for an input with {channels} "
                f"channel(s); give {counts}"
            )
    files, labels = image_files(source)
    rows = []
    for path in files:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                rows.append(_fit(image, height, width, pre.resize))
        except (OSError, ValueError) as exc:
            raise InputError(f"--calib {source}: cannot read image {path} ({exc})") from exc
    pixels = np.stack(rows)  # (N, H, W) or (N, H, W, 3), uint8
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pre.order == "BGR":
        pixels = pixels[..., ::-1]
    if np.issubdtype(spec.dtype, np.floating):
        # In the input's dtype, as torchvision's ToTensor and Normalize compute it.
        dtype = spec.dtype
        array = pixels.astype(dtype) / dtype.type(pre.scale)
        array = (array - np.asarray(pre.mean, dtype)) / np.asarray(pre.std, dtype)
    else:
        array = pixels.astype(spec.dtype)
    if layout == "NCHW":
        array = np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    arrays = {spec.name: array}
    return CalibrationData(arrays, str(source), labels=labels)


def _fit(image, height: int, width: int, resize: int | None) -> np.ndarray:
    """Resize (shorter side to ``resize``, then a center crop) to ``height`` x ``width``."""
    from PIL import Image

    if resize is None:
        return np.asarray(image.resize((width, height), Image.BILINEAR))
    w, h = image.size
    factor = resize / min(w, h)
    image = image.resize(
        (max(width, round(w * factor)), max(height, round(h * factor))), Image.BILINEAR
    )
    w, h = image.size
    left, top = (w - width) // 2, (h - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))
