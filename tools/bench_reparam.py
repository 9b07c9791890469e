"""Reparameterization benchmark: nodes, MACs and onnxruntime latency, lightir vs onnxruntime.

For each model four variants run side by side (interleaved, each repeat times a block of
inferences, the median over repeats is reported) at 1 and 2 intra-op threads:

* ``orig``      the original graph, onnxruntime optimizations disabled;
* ``lightir``   the graph after ``lightir-opt -p reparam``, optimizations disabled;
* ``ort``       the original graph with onnxruntime's own optimizer (ORT_ENABLE_ALL);
* ``lir+ort``   the lightir graph, then onnxruntime's optimizer (ORT_ENABLE_ALL).

The node counts of ``ort`` and ``lir+ort`` are those of the models onnxruntime writes with
``optimized_model_filepath`` (its fused ops included). Variants run in a shuffled order in
every repeat. Ratios are against ``ort``:
``lir+ort / ort`` below 1 means lightir made onnxruntime faster.

    python tools/bench_reparam.py                        # zoo models, batch 1
    python tools/bench_reparam.py --models repvgg resnet50 --repeats 9
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort

DEFAULT_MODELS = [
    "resnet",
    "mobilenetv2",
    "vgg",
    "repvgg",
    "acnet",
    "dbb",
    "mobileone",
    "repghost",
    "digits",
]
SPIN = True
MULTI_BRANCH = {"repvgg", "acnet", "dbb", "mobileone", "repghost"}


def session(model_bytes: bytes, threads: int, optimize: bool, save_to: str | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not SPIN:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if save_to:
        options.optimized_model_filepath = save_to
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def time_block(sess, feeds, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        sess.run(None, feeds)
    return (time.perf_counter() - start) / iterations


def measure(name: str, threads_list, repeats: int, target_s: float) -> list[dict]:
    import lightir
    from lightir import zoo
    from lightir.analysis.cost import model_cost
    from lightir.data import input_specs, synthesize

    original = zoo.build(name)
    result = lightir.optimize(original, "reparam")
    assert result.report.ok, result.report.failures
    feeds = synthesize(input_specs(original), samples=1)[0]
    shapes = {k: v.shape for k, v in feeds.items()}
    protos = {
        "orig": lightir.onnx_bridge.ir.to_proto(original).SerializeToString(),
        "lightir": lightir.onnx_bridge.ir.to_proto(result.model).SerializeToString(),
    }
    nodes = {
        "orig": model_cost(original, shapes).nodes,
        "lightir": model_cost(result.model, shapes).nodes,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for key, source in (("ort", "orig"), ("lir+ort", "lightir")):
            path = str(Path(tmp) / f"{key}.onnx")
            session(protos[source], 1, True, path)
            nodes[key] = len(onnx.load(path).graph.node)
    macs = {
        "orig": model_cost(original, shapes).macs,
        "lightir": model_cost(result.model, shapes).macs,
    }
    rows = []
    for threads in threads_list:
        variants = {
            "orig": session(protos["orig"], threads, False),
            "lightir": session(protos["lightir"], threads, False),
            "ort": session(protos["orig"], threads, True),
            "lir+ort": session(protos["lightir"], threads, True),
        }
        for sess in variants.values():  # warm up and size the blocks
            time_block(sess, feeds, 3)
        per_call = time_block(variants["orig"], feeds, 5)
        iterations = max(5, int(target_s / max(per_call, 1e-6)))
        samples = {key: [] for key in variants}
        order = list(variants)
        rng = random.Random(0)
        for _ in range(repeats):
            rng.shuffle(order)  # no variant always runs right after another
            for key in order:
                samples[key].append(time_block(variants[key], feeds, iterations))
        latency = {key: statistics.median(v) for key, v in samples.items()}
        rows.append(
            {"model": name, "threads": threads, "nodes": nodes, "macs": macs, "latency": latency}
        )
    return rows


def measure_pair(train: str, deploy: str, threads_list, repeats: int, target_s: float) -> None:
    """lightir's reparam of a train-time export against the deploy-form export, side by side."""
    import lightir
    from lightir.data import input_specs, synthesize

    train_model = lightir.load(train)
    result = lightir.optimize(train_model, "reparam")
    assert result.report.ok, result.report.failures
    deploy_model = lightir.load(deploy)
    feeds = synthesize(input_specs(deploy_model), samples=1)[0]
    protos = {
        "lightir": lightir.onnx_bridge.ir.to_proto(result.model).SerializeToString(),
        "deploy": lightir.onnx_bridge.ir.to_proto(deploy_model).SerializeToString(),
    }
    print(
        f"{Path(train).name} -> reparam vs {Path(deploy).name}: nodes "
        f"{len(list(result.model.graph))} vs {len(list(deploy_model.graph))}"
    )
    for threads in threads_list:
        for optimize in (False, True):
            variants = {k: session(v, threads, optimize) for k, v in protos.items()}
            for sess in variants.values():
                time_block(sess, feeds, 3)
            iterations = max(5, int(target_s / max(time_block(variants["deploy"], feeds, 5), 1e-6)))
            samples = {key: [] for key in variants}
            order, rng = list(variants), random.Random(0)
            for _ in range(repeats):
                rng.shuffle(order)
                for key in order:
                    samples[key].append(time_block(variants[key], feeds, iterations))
            t = {key: statistics.median(v) for key, v in samples.items()}
            print(
                f"  threads {threads} ort {'ENABLE_ALL' if optimize else 'DISABLE_ALL'}: "
                f"lightir {t['lightir'] * 1e3:.3f} ms, deploy {t['deploy'] * 1e3:.3f} ms, "
                f"ratio {t['lightir'] / t['deploy']:.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument(
        "--block-seconds", type=float, default=0.04, help="time per timed block of inferences"
    )
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="stop onnxruntime's idle threads from spinning (steadier on shared machines)",
    )
    parser.add_argument(
        "--pair",
        nargs=2,
        metavar=("TRAIN.onnx", "DEPLOY.onnx"),
        action="append",
        default=[],
        help="compare reparam(TRAIN) with a deploy-form export",
    )
    args = parser.parse_args()
    global SPIN
    SPIN = not args.no_spin
    if args.pair:
        for train, deploy in args.pair:
            measure_pair(train, deploy, args.threads, args.repeats, args.block_seconds)
        return
    print(
        f"onnxruntime {ort.__version__}; spinning {'on' if SPIN else 'off'}; batch 1; "
        f"median of {args.repeats} interleaved "
        f"blocks of ~{args.block_seconds}s; latency in ms"
    )
    header = (
        f"{'model':<12} {'thr':>3} {'nodes o/l/ort/l+o':>18} {'MACs o->l':>16} "
        f"{'orig':>7} {'lightir':>8} {'ort':>7} {'lir+ort':>8} {'lir+ort/ort':>12}"
    )
    print(header)
    for name in args.models:
        for row in measure(name, args.threads, args.repeats, args.block_seconds):
            n, m, t = row["nodes"], row["macs"], row["latency"]
            ratio = t["lir+ort"] / t["ort"]
            flag = "" if name not in MULTI_BRANCH else " (multi-branch)"
            print(
                f"{name:<12} {row['threads']:>3} "
                f"{n['orig']:>4}/{n['lightir']:>3}/{n['ort']:>3}/{n['lir+ort']:>3}    "
                f"{m['orig'] / 1e6:>7.1f}M->{m['lightir'] / 1e6:>6.1f}M "
                f"{t['orig'] * 1e3:>7.3f} {t['lightir'] * 1e3:>8.3f} {t['ort'] * 1e3:>7.3f} "
                f"{t['lir+ort'] * 1e3:>8.3f} {ratio:>12.3f}{flag}",
                flush=True,
            )


if __name__ == "__main__":
    main()
