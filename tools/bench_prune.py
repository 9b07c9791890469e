"""Pruning benchmark: MACs ratio beside measured latency ratio, and accuracy on the fixture.

Part 1 (``--latency``): for each model and ratio, ``prune{ratio=R,round=N}`` for several
rounding steps; onnxruntime (ORT_ENABLE_ALL, batch 1) runs the original and the pruned model
interleaved in a shuffled order, and the median of the repeats gives the latency ratio. The
gap between the MACs ratio and the latency ratio is what users see when pruned models are not
faster; the rounding column shows which channel multiple closes it.

Part 2 (``--accuracy``): the trained digits fixture, pruned at several ratios; channels
chosen by ``l1`` or by ``output-error`` on the calibration data, repaired by nothing, by the
bias compensation, or by least-squares reconstruction. Calibration
uses the first 200 test images; accuracy is measured on the other 250. Channel counts are
rounded to multiples of 4 here (the fixture's layers have only 16-48 channels).

    python tools/bench_prune.py --latency --accuracy
"""

from __future__ import annotations

import argparse

from timing import interleaved_medians, ort_session

import lightir
from lightir import zoo
from lightir.data import CalibrationData, input_specs, synthesize

ANY_OUTPUT = {"prune": "cos:-1"}


def latency_ratio(original, pruned, feeds, threads, repeats, block_s=0.04) -> float:
    sessions = {"orig": ort_session(original, threads), "pruned": ort_session(pruned, threads)}
    runners = {key: (lambda f, s=sess: s.run(None, f)) for key, sess in sessions.items()}
    medians = interleaved_medians(runners, feeds, repeats, per_block=None, block_s=block_s)
    return medians["pruned"] / medians["orig"]


def part_latency(models, ratios, rounds, threads, repeats) -> None:
    print(
        f"latency: onnxruntime ENABLE_ALL, spinning off, {threads} thread(s), batch 1, "
        f"median of {repeats} interleaved blocks"
    )
    print(f"{'model':<12} {'ratio':>5} {'round':>5} {'params':>7} {'MACs':>6} {'latency':>8}")
    for name in models:
        original = zoo.build(name)
        feeds = synthesize(input_specs(original), samples=1)[0]
        for ratio in ratios:
            for rounding in rounds:
                result = lightir.optimize(
                    original, f"prune{{ratio={ratio},round={rounding}}}", tolerances=ANY_OUTPUT
                )
                report = result.report
                cost = report.records[0].cost
                lat = latency_ratio(original, result.model, feeds, threads, repeats)
                print(
                    f"{name:<12} {ratio:>5} {rounding:>5} "
                    f"{cost.params / report.original.params:>7.3f} "
                    f"{cost.macs / report.original.macs:>6.3f} {lat:>8.3f}",
                    flush=True,
                )


def part_accuracy(ratios) -> None:
    images, labels = zoo.digits_test_split()
    calib = CalibrationData({"input": images[:200]})
    eval_images, eval_labels = images[200:], labels[200:]
    model = zoo.build("digits")
    base = zoo.accuracy(model, eval_images, eval_labels)
    print(f"digits fixture: accuracy {base:.3f} on 250 held-out images before pruning")
    # Selection (l1 on weights, or output-error on the calibration data) and repair
    # (nothing, the bias compensation, the least-squares refit), each pair side by side.
    variants = {
        "l1 raw": ("criterion=l1,compensate=false", None),
        "l1 comp": ("criterion=l1", None),
        "out-err comp": ("criterion=output-error", calib),
        "l1 refit": ("criterion=l1,refit=true", calib),
        "out-err refit": ("criterion=output-error,refit=true", calib),
    }
    print(f"{'ratio':>5} {'MACs':>6} {'params':>7} " + " ".join(f"{k:>13}" for k in variants))
    for ratio in ratios:
        row, costs = [], None
        for options, data in variants.values():
            result = lightir.optimize(
                model,
                f"prune{{ratio={ratio},round=4,{options}}}",
                calib=data,
                tolerances=ANY_OUTPUT,
            )
            record = result.report.records[0]
            costs = (
                record.cost.macs / result.report.original.macs,
                record.cost.params / result.report.original.params,
            )
            row.append(zoo.accuracy(result.model, eval_images, eval_labels))
        print(
            f"{ratio:>5} {costs[0]:>6.3f} {costs[1]:>7.3f} " + " ".join(f"{a:>13.3f}" for a in row),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--models", nargs="*", default=["resnet", "mobilenetv2", "vgg", "resnet50"])
    parser.add_argument("--ratios", nargs="*", type=float, default=[0.3, 0.5])
    parser.add_argument("--rounds", nargs="*", type=int, default=[1, 8, 16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    if args.latency:
        part_latency(args.models, args.ratios, args.rounds, args.threads, args.repeats)
    if args.accuracy:
        part_accuracy([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])


if __name__ == "__main__":
    main()
