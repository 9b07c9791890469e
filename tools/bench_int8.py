"""lightir int8 against onnxruntime's quantize_static, side by side, on the same calibration data.

For each model: the fp32 model (BatchNormalization folded), onnxruntime's quantize_static
(QDQ, per-channel, U8S8, MinMax, and the S8S8 variant), and lightir ``int8``. Reported:

* accuracy on held-out data (the digits fixture) or, for zoo models with random weights,
  top-1 agreement and cosine similarity with fp32 on 64 held-out synthesized inputs;
* model bytes;
* onnxruntime latency relative to fp32 (ORT_ENABLE_ALL, 1 thread, spinning off, batch 1,
  median of interleaved blocks in a shuffled order).

    python tools/bench_int8.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from timing import interleaved_medians, ort_session

import lightir
from lightir import zoo
from lightir.data import CalibrationData, input_specs, synthesize


class Reader(CalibrationDataReader):
    def __init__(self, batches):
        self.batches = iter(batches)

    def get_next(self):
        return next(self.batches, None)


def latencies(paths: dict[str, str], feeds, repeats: int) -> dict[str, float]:
    sessions = {k: ort_session(v) for k, v in paths.items()}
    runners = {k: lambda f, sess=sess: sess.run(None, f) for k, sess in sessions.items()}
    # Blocks of about 50 ms of the first runner (fp32).
    return interleaved_medians(runners, feeds, blocks=repeats, per_block=None, block_s=0.05)


def evaluate(path: str, images, labels, reference) -> str:
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    logits = np.concatenate(
        [sess.run(None, {name: images[i : i + 16]})[0] for i in range(0, len(images), 16)]
    )
    if labels is not None:
        return f"acc {float((logits.argmax(1) == labels).mean()):.3f}"
    top1 = float((logits.argmax(1) == reference.argmax(1)).mean())
    cos = float(np.sum(logits * reference) / (np.linalg.norm(logits) * np.linalg.norm(reference)))
    return f"top1 {top1:.3f} cos {cos:.5f}"


def run_model(name: str, repeats: int, work: Path) -> None:
    fp32 = lightir.optimize(f"zoo:{name}", "fold-bn,cleanup").model
    fp32_path = str(work / f"{name}_fp32.onnx")
    lightir.save(fp32, fp32_path)
    specs = input_specs(fp32)
    if name == "digits":
        images, labels = zoo.digits_test_split()
        calib_images, eval_images, eval_labels = images[:200], images[200:], labels[200:]
    else:
        calib_images = np.concatenate([synthesize(specs, 16, seed=s)[0]["input"] for s in (1,)])
        eval_images = synthesize(specs, 64, seed=7)[0]["input"]
        eval_labels = None
    input_name = specs[0].name
    batches = [{input_name: calib_images[i : i + 8]} for i in range(0, len(calib_images), 8)]
    paths = {"fp32": fp32_path}
    for tag, activation in (("ort-u8s8", QuantType.QUInt8), ("ort-s8s8", QuantType.QInt8)):
        paths[tag] = str(work / f"{name}_{tag}.onnx")
        quantize_static(
            fp32_path,
            paths[tag],
            Reader(list(batches)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=activation,
            weight_type=QuantType.QInt8,
        )
    # The verifier checks on the first --samples rows and the pass fits on the rest: put two
    # extra rows first so lightir calibrates on exactly the samples quantize_static gets.
    verify_rows = synthesize(specs, 2, seed=99)[0][input_name]
    result = lightir.optimize(
        fp32,
        "int8",
        calib=CalibrationData({input_name: np.concatenate([verify_rows, calib_images])}),
        tolerances={"int8": "cos:-1"},
    )
    paths["lightir"] = str(work / f"{name}_lightir.onnx")
    lightir.save(result.model, paths["lightir"])
    reference = ort_session(fp32_path).run(None, {input_name: eval_images})[0]
    feeds = {input_name: eval_images[:1]}
    times = latencies(paths, feeds, repeats)
    for key, path in paths.items():
        print(
            f"{name:<12} {key:<10} {evaluate(path, eval_images, eval_labels, reference):<24} "
            f"{Path(path).stat().st_size / 1024:>8.0f} kB  "
            f"latency {times[key] / times['fp32']:.3f}",
            flush=True,
        )


def memory_worker(batches: int) -> None:
    """Peak memory of int8 calibration on ``batches`` batches of 8 (data loaded first)."""
    import json
    import resource

    from lightir.data import CalibrationData

    model = lightir.optimize("zoo:resnet", "fold-bn").model
    data = synthesize(input_specs(model), 8 * batches, seed=3)[0]
    calib = CalibrationData(data)
    lightir.optimize(model, "int8{batches=1}", calib=CalibrationData({"input": data["input"][:10]}))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    lightir.optimize(model, f"int8{{batches={batches}}}", calib=calib, samples=2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "batches": batches,
                "extra_peak_kb": peak - baseline,
                "seconds": time.perf_counter() - start,
            }
        )
    )


def memory_report() -> None:
    import json
    import subprocess
    import sys

    print("calibration memory: peak RSS growth during int8 on zoo:resnet, batches of 8 inputs")
    for batches in (8, 80):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-worker", str(batches)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(
            f"  {batches:>3} batches ({8 * batches:>4} samples): "
            f"+{row['extra_peak_kb'] / 1024:.1f} MB peak over the warm process, "
            f"{row['seconds']:.1f} s",
            flush=True,
        )


def compression_report() -> None:
    """Deep Compression without retraining: prune, then k-means sharing, then entropy coding."""
    images, labels = zoo.digits_test_split()
    calib = CalibrationData({"input": images[:200]})
    rows = [
        ("vgg", "fold-bn,prune{ratio=0.3},share-weights{bits=4}", None),
        ("digits", "fold-bn,share-weights{bits=4}", None),
        ("digits", "fold-bn,prune{ratio=0.3,refit=true},share-weights{bits=4}", calib),
        ("digits", "fold-bn,sparsify{ratio=0.5},share-weights{bits=4}", None),
        ("digits", "fold-bn,ternary", None),
        ("digits", "fold-bn,binary", None),
    ]
    lift = {"prune": "cos:-1", "share-weights": "cos:-1", "ternary": "cos:-1", "binary": "cos:-1"}
    print(
        "model   pipeline                                                  stored-bytes factor  "
        "accuracy (digits: 250 held-out)"
    )
    for name, pipeline, data in rows:
        model = zoo.build(name)
        dense = sum(v.const_value.nbytes for v in model.graph.initializers.values())
        names = {item.split("{")[0] for item in pipeline.split(",")}
        tolerances = {k: v for k, v in lift.items() if k in names}
        result = lightir.optimize(model, pipeline, calib=data, tolerances=tolerances)
        stats = result.report.records[-1].stats
        rest = sum(
            v.const_value.nbytes
            for v in result.model.graph.initializers.values()
            if not v.name.endswith(("_codes", "_codebook"))
        )
        if "entropy_coded_bytes" in stats:
            stored = stats["entropy_coded_bytes"] + rest
        else:
            stored = result.report.records[-1].cost.bytes
        accuracy = (
            f"{zoo.accuracy(result.model, images[200:], labels[200:]):.3f}"
            if name == "digits"
            else "-"
        )
        print(f"{name:<7} {pipeline:<57} {dense / stored:>6.1f}x  {accuracy}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="*", default=["digits", "resnet", "mobilenetv2", "vgg", "resnet50"]
    )
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument(
        "--memory", action="store_true", help="calibration memory at 8 and 80 batches"
    )
    parser.add_argument("--memory-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--compression", action="store_true", help="Deep Compression table")
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return
    if args.memory:
        memory_report()
        return
    if args.compression:
        compression_report()
        return
    print(f"onnxruntime {ort.__version__}; latency relative to fp32, 1 thread, batch 1")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            run_model(name, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
