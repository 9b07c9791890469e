"""How far an int8 model's outputs move when its rounding ties fall the other way.

Runs the QDQ model under onnxruntime's integer kernels (ORT_ENABLE_ALL), then again with
every activation Q/DQ scale moved by up to ``--ulps`` ulps (random per scale, ``--draws``
times), and prints the relative output change per input, as the verifier measures it. Two
correct int8 implementations differ by about that much in the value they round; a model
whose outputs move by more than the exact tolerance (1e-3) here cannot be checked at its
outputs alone (``lightir.lowering.stepwise``).

    python tools/int8_ties.py zoo:resnet                     # the zoo ResNet, int8
    python tools/int8_ties.py ppocrv6-tiny-rec --calib 4     # a corpus model, 4 real rows
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

import lightir
from lightir.data import CalibrationData, input_specs, synthesize
from lightir.ir_util import clone_model
from lightir.onnx_bridge import OrtModel
from lightir.testing import corpus, tasks
from lightir.verify import compare_outputs, output_scales


def moved(model: ir.Model, ulps: int, rng: np.random.Generator) -> ir.Model:
    """A copy with each activation Q/DQ scale moved by a random -ulps..ulps ulps."""
    copy = clone_model(model)
    for node in copy.graph:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = node.inputs[1]
        if scale is None or scale.const_value is None or node.inputs[0].const_value is not None:
            continue  # weights (constant codes) keep their scales
        value = scale.const_value.numpy().astype(np.float32)
        steps = rng.integers(-ulps, ulps + 1, size=value.shape).astype(np.int32)
        shifted = (value.view(np.int32) + steps).view(np.float32).reshape(value.shape)
        scale.const_value = ir.tensor(shifted, name=scale.name)
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="zoo:NAME or a corpus name")
    parser.add_argument("--calib", type=int, default=0, help="real rows (corpus models)")
    parser.add_argument("--samples", type=int, default=4, help="synthesized inputs")
    parser.add_argument("--ulps", type=int, default=1)
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model.startswith("zoo:"):
            model = lightir.optimize(args.model, "reparam,int8").model
            calib = None
        else:
            path = Path(tmp) / "calib.npz"
            tasks.calibration_npz(args.model, path, 32)
            model = lightir.optimize(str(corpus.path(args.model)), "int8", calib=str(path)).model
            calib = CalibrationData.from_npz(path)
    specs = input_specs(model)
    if calib is not None and args.calib:
        batches = [
            {s.name: calib.arrays[s.name][i : i + 1] for s in specs} for i in range(args.calib)
        ]
    else:
        fixed = [
            dataclasses.replace(
                spec, shape=tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
            )
            for spec in specs
        ]
        batches = synthesize(fixed, samples=args.samples, seed=0, dims={})
    scales = output_scales(model)
    reference = OrtModel(model, optimize="all").run_all(batches)
    rng = np.random.default_rng(0)
    for draw in range(args.draws):
        out = OrtModel(moved(model, args.ulps, rng), optimize="all").run_all(batches)
        rel = [
            max(m.rel_error for m in compare_outputs([want], [got], scales))
            for want, got in zip(reference, out)
        ]
        print(f"draw {draw}: rel output change per input " + " ".join(f"{r:.3g}" for r in rel))


if __name__ == "__main__":
    main()
