"""Low-rank factorization on the trained fixture: accuracy, MACs, params and latency per budget.

For each pass (svd, spatial-svd, tucker, cp) and each whole-model MAC budget, the digits
fixture (BN folded) is factorized without refit, with the linear least-squares refit (the
default) and with the refit through the following ReLU (``refit-act=true``). Calibration uses
the first 200 test images (the verifier keeps 2 extra rows put in front), and accuracy is
measured on the other 250. Latency is onnxruntime's (ORT_ENABLE_ALL, 1 thread, spinning off,
batch 1), relative to the unfactorized model, median of interleaved blocks.

    python tools/bench_lowrank.py
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import interleaved_medians, ort_session

import lightir
from lightir import zoo
from lightir.data import CalibrationData, input_specs, synthesize


def latency_ratio(base, model, feeds) -> float:
    sessions = {"base": ort_session(base), "model": ort_session(model)}
    runners = {key: (lambda f, s=sess: s.run(None, f)) for key, sess in sessions.items()}
    medians = interleaved_medians(runners, feeds, blocks=21, per_block=200)
    return medians["model"] / medians["base"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="*", type=float, default=[0.7, 0.5, 0.3])
    parser.add_argument("--methods", nargs="*", default=["svd", "spatial-svd", "tucker", "cp"])
    args = parser.parse_args()
    images, labels = zoo.digits_test_split()
    base = lightir.optimize("zoo:digits", "fold-bn").model
    specs = input_specs(base)
    verify = synthesize(specs, 2, seed=99)[0]["input"]
    calib = CalibrationData({"input": np.concatenate([verify, images[:200]])})
    eval_images, eval_labels = images[200:], labels[200:]
    feeds = {"input": eval_images[:1]}
    print(
        f"digits fixture (BN folded): accuracy {zoo.accuracy(base, eval_images, eval_labels):.3f}"
        " on 250 held-out images"
    )
    print(
        f"{'pass':<12} {'budget':>6} {'MACs':>6} {'params':>7} {'latency':>8} "
        f"{'acc plain':>10} {'refit lin':>10} {'refit act':>10}"
    )
    variants = {"plain": "", "lin": ",refit=true", "act": ",refit=true,refit-act=true"}
    for method in args.methods:
        for budget in args.budgets:
            row = {}
            for key, extra in variants.items():
                result = lightir.optimize(
                    base,
                    f"{method}{{target-macs={budget},round=4{extra}}}",
                    calib=calib if extra else None,
                    tolerances={method: "cos:-1"},
                )
                row[key] = result
            result = row["plain"]
            record, original = result.report.records[0], result.report.original
            accuracies = " ".join(
                f"{zoo.accuracy(row[key].model, eval_images, eval_labels):>10.3f}"
                for key in variants
            )
            print(
                f"{method:<12} {budget:>6} {record.cost.macs / original.macs:>6.3f} "
                f"{record.cost.params / original.params:>7.3f} "
                f"{latency_ratio(base, result.model, feeds):>8.3f} {accuracies}",
                flush=True,
            )


if __name__ == "__main__":
    main()
