"""ONNX -> Relax -> a library the TVM runtime loads alone, checked against onnxruntime.

``compile_model`` imports the model with ``tvm.relax.frontend.onnx.from_onnx`` at fixed input
shapes, builds it for the target and exports ``NAME.so`` with ``NAME.json`` beside it (input
names, shapes and dtypes, output names, target, pipeline, versions, tuning, check). When the
build can run here, natively or under emulation, it then runs the library and onnxruntime on
the same inputs and holds the difference to the exact tolerance of :mod:`lightir.verify`: a
library that disagrees is deleted and reported, never left behind.

ARM libraries are linked with ``aarch64-linux-gnu-g++`` when it is installed, else with the
``ziglang`` wheel's clang (``zig c++ -target aarch64-linux-gnu``), so a pip install is enough
to build them. They are checked the same way under qemu-aarch64 when
:mod:`lightir.lowering.emulation` is set up; when it is not, the result says so and why.

CPU builds use Relax's "zero" pipeline (legalize, fold constants, fuse) and no schedules:
correct code, far slower than onnxruntime until tuned. Their long float32 reductions (Softmax,
ReduceSum, ReduceMean) accumulate in float64 (:func:`accurate_reductions`): TVM's CPU code sums
one element after another, which over a 6625-class Softmax drifts 15x further from the true
value than onnxruntime's vectorized sum. CUDA builds use the default GPU
pipeline, whose dlight rules bind every kernel to threads (:func:`unscheduled_kernels`
checks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from lightir.data import concrete_shape, input_specs, synthesize
from lightir.errors import InputError, LightirError, UsageError
from lightir.lowering.layout import LAYOUTS, channels_last
from lightir.lowering.relax_util import mutate_functions
from lightir.lowering.targets import TargetSpec, resolve

CROSS_CXX = {"arm": "aarch64-linux-gnu-g++"}


class LoweringError(LightirError):
    """The compiled library does not compute what the ONNX model computes."""

    exit_code = 1
    integer_ops = 0  # set by the check: the build computed that many ops in integers
    batches = None  # the inputs the outputs were compared on, when they were compared
    tolerance = None


@dataclass
class LoweringResult:
    """What :func:`compile_model` built and measured."""

    library: Path
    metadata: dict
    seconds: float
    checked: bool = False
    rel_error: float | None = None
    tolerance: float | None = None
    checked_on: str = ""  # "this machine" or "qemu-aarch64"
    checked_with: str = ""  # "synthesized" or "calibration" inputs
    stepwise: dict | None = None  # an integer build judged per quantized tensor (see _stepwise)
    notes: list[str] = field(default_factory=list)


def unsupported_ops(model: ir.Model) -> list[str]:
    """Op types of ``model`` the TVM ONNX frontend cannot convert, all of them at once."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = onnx_frontend._get_convert_map()
    missing = set()
    for graph in model.graphs():
        for node in graph:
            if node.domain not in ("", "ai.onnx") or node.op_type not in known:
                domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
                missing.add(f"{domain}{node.op_type}")
    return sorted(missing)


def compile_model(
    model: ir.Model,
    output: str | os.PathLike,
    target: str | TargetSpec = "x86",
    *,
    dims: dict[str, int] | None = None,
    pipeline: str = "",
    check: bool = True,
    samples: int = 2,
    seed: int = 0,
    tune_trials: int = 0,
    tuning_db: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    rpc=None,
    integer: bool = True,
    calib=None,
    layout: str = "nhwc",
    tune_seconds: float | None = None,
    tune_goal: bool | float = False,
) -> LoweringResult:
    """Build ``model`` for ``target`` into ``output`` (a ``.so``) and check it when it can run.

    Dynamic dims are fixed for the build: the batch to 1, others from ``dims``. With
    ``tuning_db``, kernels come from that MetaSchedule database, after ``tune_trials`` trials
    on the tasks it lacks (:mod:`lightir.lowering.tuning`); ``progress`` gets a line per
    measured batch; it stops after ``tune_seconds``, and with ``tune_goal`` (tuning on this
    machine) once the built model is as fast as onnxruntime here (a number: that many
    seconds). Off by default: on O-Net that stop came at 1.19-1.20x onnxruntime as
    tools/bench_lowering.py times it, where the full budget reached 0.99x. ``rpc``
    (:class:`lightir.lowering.rpc.RPCTracker`) measures the trials on the tracker's servers
    instead of this machine. ``integer`` computes the QDQ
    convolutions and matmuls of an int8 model in integers (:mod:`lightir.lowering.integer`);
    ``False`` keeps TVM's float fake-quant, to compare against. ``layout``: the float
    convolutions of a model with no integer ops are built channels-last on x86
    (``"nhwc"``, :mod:`lightir.lowering.layout`) or as the model has them (``"nchw"``). ``calib``
    (:class:`lightir.data.CalibrationData`): the check runs on its first ``samples`` rows,
    inputs in the model's working range, instead of synthesized ones (an int8 model fed
    N(0, 1) noise sits where rounding ties amplify: PP-OCR's orientation classifier's
    integer build missed onnxruntime's int8 run by 0.7% there and matched it to 1.9e-9 on a
    real input).
    """
    started = time.perf_counter()
    spec = resolve(target) if isinstance(target, str) else target
    output = Path(output)
    if output.suffix != ".so":
        raise UsageError(f"{output}: a compiled model is a shared library; name it NAME.so")
    missing = unsupported_ops(model)
    if missing:
        raise InputError(
            f"TVM's ONNX importer lacks {len(missing)} op(s) used by the model: "
            f"{', '.join(missing)}; lower the float model or keep onnxruntime for it"
        )
    specs = input_specs(model)
    shapes = {s.name: concrete_shape(s, 1, dict(dims or {})) for s in specs}
    if calib is not None:
        calib = calib.bind(specs)
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if tune_trials and tuning_db is None:
        raise UsageError("--tune needs --tuning-db DIR, where the records are kept")
    if rpc is not None and not tune_trials:
        raise UsageError("--rpc measures tuning trials: give --tune N too")
    if tuning_db is not None and spec.kind != "x86" and rpc is None:
        raise UsageError(
            f"tuning measures kernels on the target: tune on a {spec.kind} machine, or "
            "measure there with --rpc HOST:PORT:KEY (this one can only tune x86)"
        )
    build = dict(
        shapes=shapes,
        spec=spec,
        specs=specs,
        output=output,
        pipeline=pipeline,
        check=check,
        samples=samples,
        seed=seed,
        calib=calib,
        dims=dims,
        tuning_db=tuning_db,
        tune_trials=tune_trials,
        progress=progress,
        rpc=rpc,
        layout=layout,
        budget={"max_seconds": tune_seconds},
    )
    if tune_trials and tune_goal is True and rpc is None and spec.kind == "x86":
        build["budget"]["goal_seconds"] = onnxruntime_seconds(model, shapes)
    elif tune_trials and tune_goal:
        build["budget"].update(goal_seconds=float(tune_goal), explicit_goal=True)
    try:
        result = _build_and_check(model, integer=integer, **build)
    except LoweringError as exc:
        if not integer or not getattr(exc, "integer_ops", 0):
            raise
        # The integer build disagrees with onnxruntime's int8 kernels (a requantize rounding
        # tie decided the other way, amplified by later layers; or a rewrite bug): keep what
        # verifies, the float fake-quant build, and say so.
        result = _build_and_check(model, integer=False, **build)
        why = str(exc).removesuffix("; nothing was written")  # this one is written
        result.notes.append(
            f"the integer int8 build was not kept ({why}); built as float fake-quant"
        )
        result.metadata["integer_fallback"] = why
        metadata_path(output).write_text(json.dumps(result.metadata, indent=2))
    result.seconds = time.perf_counter() - started
    return result


def _build_and_check(
    model,
    *,
    integer,
    shapes,
    spec,
    specs,
    output,
    pipeline,
    check,
    samples,
    seed,
    calib,
    dims,
    tuning_db,
    tune_trials,
    progress,
    rpc,
    layout,
    budget,
) -> LoweringResult:
    """One build of ``model``, exported to ``output`` only when its check passes."""
    tuning, facts = {}, {"integer_ops": 0}
    executable = _build(
        model,
        shapes,
        spec,
        tuning_db,
        tune_trials,
        tuning,
        progress,
        rpc,
        integer,
        facts,
        layout=layout,
        budget=budget,
    )
    metadata = {
        "inputs": [
            {"name": s.name, "shape": list(shapes[s.name]), "dtype": str(np.dtype(s.dtype))}
            for s in specs
        ],
        "outputs": [v.name for v in model.graph.outputs],
        "output_specs": [_value_spec(v) for v in model.graph.outputs],
        "target": spec.config,
        "target_name": spec.name,
        "device": "cuda" if spec.kind == "cuda" else "cpu",
        "pipeline": pipeline,
        "versions": _versions(),
        "tuning": tuning,
        "integer_ops": facts["integer_ops"],  # QDQ convs / matmuls computed in integers
        "layout": facts["layout"],
    }
    if facts["integer_ops"] and spec.kind == "x86":
        from lightir.lowering.integer import vnni_kernels

        metadata["vnni"] = vnni_kernels(executable)  # conv / matmul kernels using vpdpbusd
    result = LoweringResult(output, metadata, 0.0)
    with tempfile.TemporaryDirectory(dir=output.resolve().parent, prefix=".lightir-") as tmp:
        library = Path(tmp) / output.name
        _export(executable, library, spec)
        run = _runner(library, metadata, spec, result) if check else None
        if run is not None:
            try:
                _check(model, run, metadata, result, samples, seed, dims, calib)
            except LoweringError as exc:
                exc.integer_ops = metadata["integer_ops"]
                if not exc.integer_ops or exc.batches is None:
                    raise
                # An integer build that misses at the outputs may only have decided rounding
                # ties the other way (lightir.lowering.stepwise): judge it per quantized tensor.
                stepwise = _stepwise(model, exc.batches, shapes, spec, tuning_db, Path(tmp), exc)
                result.stepwise = stepwise.as_dict()
                result.notes.append(
                    f"outputs rel error {result.rel_error:.3g} > {result.tolerance:.2g} "
                    f"(an int8 model can amplify a rounding tie); kept per quantized tensor: "
                    f"{stepwise.describe()}"
                )
        if spec.kind == "cuda":
            result.notes.append(compile_cuda_source(executable, spec, Path(tmp)))
        metadata["check"] = (
            {
                "run_on": result.checked_on,
                "rel_error": result.rel_error,
                "tolerance": result.tolerance,
                "inputs": result.checked_with,
                **({"stepwise": result.stepwise} if result.stepwise else {}),
            }
            if result.checked
            else {"run_on": None, "notes": list(result.notes)}
        )
        (Path(tmp) / "meta.json").write_text(json.dumps(metadata, indent=2))
        os.replace(library, output)
        os.replace(Path(tmp) / "meta.json", metadata_path(output))
    return result


def metadata_path(library: str | os.PathLike) -> Path:
    """``model.so`` -> ``model.json``."""
    return Path(library).with_suffix(".json")


def _at_fixed_dims(model: ir.Model, shapes: dict) -> ir.Model:
    """A copy with the build's input dims fixed and the shape arithmetic folded away.

    Exporters compute Reshape targets at run time (Shape -> Gather -> Concat -> Reshape:
    PP-OCR's classifier, ddddocr's recognizer). TVM's importer needs a constant shape there;
    with every input dim fixed, onnxscript's constant folder turns that arithmetic into
    constants. The model itself is left unchanged.
    """
    from onnxscript.optimizer import fold_constants_ir

    from lightir.ir_util import clone_model

    copy = clone_model(model)
    for value in copy.graph.inputs:
        if value.name in shapes:
            value.shape = ir.Shape(list(shapes[value.name]))
    for node in copy.graph:
        for out in node.outputs:
            out.shape = None
    try:
        ir.passes.common.ShapeInferencePass()(copy)
        fold_constants_ir(copy)
        ir.passes.common.RemoveUnusedNodesPass()(copy)
    except Exception:  # folding is an aid to the importer; the import says what fails
        return model
    return copy


def _build(
    model: ir.Model,
    shapes: dict,
    spec: TargetSpec,
    tuning_db,
    trials,
    tuning,
    progress,
    rpc=None,
    integer: bool = True,
    facts: dict | None = None,
    layout: str = "nhwc",
    budget: dict | None = None,
):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    proto = ir.to_proto(_at_fixed_dims(model, shapes))
    try:
        mod = from_onnx(proto, shape_dict={k: list(v) for k, v in shapes.items()})
    except Exception as exc:
        raise InputError(
            f"TVM could not import the model ({_first_line(exc)}); run lightir's cleanup pass "
            "first, or report the model"
        ) from exc
    if integer:
        from lightir.lowering.integer import integer_qdq, nhwc, vnni_layout

        mod, count = integer_qdq(mod)
        if facts is not None:
            facts["integer_ops"] = count
        if count and spec.kind != "cuda":
            mod = nhwc(mod)
        if count and spec.kind == "x86":
            mod = vnni_layout(mod)
    integer_ops = (facts or {}).get("integer_ops", 0)
    if spec.kind == "x86" and layout == "nhwc" and not integer_ops:
        mod = channels_last(mod)
    if facts is not None:  # the convs' layout: channels-last, or the integer rewrite's NHWC
        facts["layout"] = (
            "nhwc"
            if spec.kind != "cuda" and integer_ops or spec.kind == "x86" and layout == "nhwc"
            else "nchw"
        )
    target = spec.tvm_target()
    if spec.kind != "cuda":  # GPU reductions are trees across threads: accurate already
        mod = accurate_reductions(mod)
    if spec.kind == "cuda":
        with target:
            mod = relax.get_default_pipeline(target)(mod)
        missing = unscheduled_kernels(mod)
        if missing:
            raise LoweringError(
                f"{len(missing)} GPU kernel(s) have no thread binding after dlight "
                f"({', '.join(missing[:5])}); report the model"
            )
        return tvm.compile(mod, target)
    if tuning_db is None:
        with target:
            return tvm.compile(relax.get_pipeline("zero")(mod), target)
    from lightir.lowering.tuning import apply_database, tune

    started = time.perf_counter()
    with target:
        fused = relax.get_pipeline("zero")(mod)
    budget = dict(budget or {})
    goal = budget.get("goal_seconds")
    explicit = budget.pop("explicit_goal", False)  # a number of seconds, not onnxruntime
    database, stats = tune(fused, target, str(tuning_db), trials, progress, rpc, **budget)
    # The "zero" pipeline fuses the imported module again, exactly as for the tasks, and
    # replaces each fused function that has a record (fusing an already fused module yields
    # other functions, which match no record).
    tuned, applied = apply_database(mod, target, database)
    executable = tvm.compile(tuned, target)
    spent, checks, tuned_now = stats.measured_now, [], len(stats.tuned_now)
    # The goal stop compares kernel times, each measured alone, with onnxruntime's whole
    # model; the model also pays the VM's calls between kernels (O-Net: kernels 0.246 ms,
    # model 0.31), and onnxruntime timed once before tuning is not timed beside it. So a
    # stop at the goal is checked on the built model, timed back to back with onnxruntime,
    # and tuning goes on, every task from its records, towards a goal scaled by the gap.
    while stats.stopped == "goal" and rpc is None:
        ratio = _ratio_to_onnxruntime(executable, model, shapes, goal if explicit else None)
        checks.append({"kernels_ms": stats.estimate * 1e3, "model_vs_goal": ratio})
        elapsed = time.perf_counter() - started
        left = budget.get("max_seconds")
        if ratio <= 1.0:
            break
        if spent >= trials or (left is not None and elapsed >= left):
            stats.stopped = "time" if spent < trials else ""  # the model missed the goal
            break
        if progress is not None:
            progress(f"tuning goes on: the built model takes {ratio:.2f}x the goal's time")
        budget["goal_seconds"] = stats.estimate / ratio
        if left is not None:
            budget["max_seconds"] = left - elapsed
        database, stats = tune(
            fused, target, str(tuning_db), trials - spent, progress, rpc, again=True, **budget
        )
        spent += stats.measured_now
        tuned, applied = apply_database(mod, target, database)
        executable = tvm.compile(tuned, target)
    tuning.update(
        database=str(Path(tuning_db).resolve()),
        tasks=stats.tasks,
        already_tuned=stats.already_tuned if not checks else stats.tasks - tuned_now,
        tuned_now=tuned_now,
        trials=trials if tuned_now else 0,
        measured=spent,
        applied=len(applied),
        seconds=round(time.perf_counter() - started, 1),
        **({"stopped": stats.stopped} if stats.stopped else {}),
        **({"search": stats.search} if tuned_now else {}),
        **(
            {"estimate_ms": round(stats.estimate * 1e3, 4)}
            if stats.estimate is not None and tuned_now
            else {}
        ),
        **({"goal_ms": round(goal * 1e3, 4)} if goal else {}),
        **({"goal_checks": checks} if checks else {}),
    )
    return executable


def _ratio_to_onnxruntime(executable, model: ir.Model, shapes: dict, goal=None) -> float:
    """The built model's time over onnxruntime's, timed back to back; or over ``goal`` s."""
    import tvm
    from tvm import relax

    from lightir.search.latency import paired_ratio, timed

    ort_run, feeds, specs = _onnxruntime_runner(model, shapes)
    vm = relax.VirtualMachine(executable, tvm.cpu())

    def run():  # as CompiledModel.run_dict runs it: numpy in, numpy out
        out = vm["main"](*[tvm.runtime.tensor(feeds[s.name]) for s in specs])
        return [v.numpy() for v in ([out] if hasattr(out, "numpy") else list(out))]

    if goal is not None:
        return timed(run, min_seconds=0.5, max_runs=2000) / goal
    return paired_ratio(ort_run, run, rounds=9, min_seconds=0.05)


def _onnxruntime_runner(model: ir.Model, shapes: dict):
    """(run, feeds, specs): one onnxruntime run of ``model`` at the build's shapes.

    onnxruntime as it is deployed: every graph optimization, its default threads, spinning
    on; synthesized inputs.
    """
    from lightir.onnx_bridge import ort

    fixed = _at_fixed_dims(model, shapes)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        ir.to_proto(fixed).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    specs = input_specs(fixed)
    feeds = synthesize(specs, 1)[0]
    return (lambda: session.run(None, feeds)), feeds, specs


def onnxruntime_seconds(model: ir.Model, shapes: dict) -> float:
    """Median seconds of one run of ``model`` in onnxruntime here: the goal tuning stops at."""
    from lightir.search.latency import timed

    run, _, _ = _onnxruntime_runner(model, shapes)
    return timed(run, min_seconds=0.5, max_runs=2000)


def accurate_reductions(mod):
    """``mod`` with float32 softmax / log-softmax / sum / mean accumulating in float64.

    TVM's untuned CPU schedule adds the elements of a reduction one after another in float32;
    with one large term and thousands of small ones (a confident Softmax over 6625 characters)
    the sum drifts by ~4e-6 relative and the probabilities by 3e-5 absolute, where
    onnxruntime's vectorized sum stays within 2e-6: PP-OCR's recognizers then fail the exact
    check. Summing in float64 and rounding once puts TVM within 5e-8 of the float64 result.
    The exponentials and the division stay float32; only the accumulator widens.
    """
    import tvm
    from tvm import relax

    ops = {
        name: tvm.ir.Op.get(f"relax.{name}")
        for name in ("nn.softmax", "nn.log_softmax", "sum", "mean")
    }

    def is_f32(expr) -> bool:
        info = getattr(expr, "ty", None)  # TVM 0.27: .ty / relax.TensorType (was struct_info)
        return isinstance(info, relax.TensorType) and info.dtype == "float32"

    @relax.expr_functor.mutator
    class Widen(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not call.args or not is_f32(call.args[0]):
                return call
            x, emit, op = call.args[0], self.builder_.emit, relax.op
            if call.op in (ops["sum"], ops["mean"]):
                axis = None if call.attrs.axis is None else [int(a) for a in call.attrs.axis]
                reduce = op.sum if call.op == ops["sum"] else op.mean
                wide = reduce(op.astype(x, "float64"), axis, bool(call.attrs.keepdims))
                return op.astype(emit(wide), "float32")
            if call.op in (ops["nn.softmax"], ops["nn.log_softmax"]):
                axis = int(call.attrs.axis)
                shifted = emit(op.subtract(x, op.max(x, axis, keepdims=True)))
                exp = emit(op.exp(shifted))
                total = emit(op.sum(op.astype(exp, "float64"), axis, keepdims=True))
                total = emit(op.astype(total, "float32"))
                if call.op == ops["nn.softmax"]:
                    return op.divide(exp, total)
                return op.subtract(shifted, op.log(total))
            return call

    return mutate_functions(Widen(mod), mod)


def _export(executable, library: Path, spec: TargetSpec) -> None:
    compiler = CROSS_CXX.get(spec.kind)
    if compiler is None:
        executable.export_library(str(library))
        return
    if shutil.which(compiler) is None:
        compiler = _zig_cross_compiler(library.parent)
    executable.export_library(str(library), cc=compiler)


def _zig_cross_compiler(workdir: Path) -> str:
    """A ``c++`` for aarch64 from the ``ziglang`` wheel, when no system cross compiler exists."""
    import importlib.util
    import sys

    if importlib.util.find_spec("ziglang") is None:
        raise UsageError(
            "building for arm needs aarch64-linux-gnu-g++ or the ziglang wheel: "
            "pip install 'lightir[tvm]' (or apt install g++-aarch64-linux-gnu)"
        )
    wrapper = workdir / "aarch64-c++"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m ziglang c++ -target aarch64-linux-gnu "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def _runner(library: Path, metadata: dict, spec: TargetSpec, result: LoweringResult):
    """A ``run(feeds) -> outputs`` for the library here or under emulation, else None + a note."""
    if spec.runs_here:
        result.checked_on = "this machine"
        return CompiledModel(library, metadata).run_dict
    if spec.kind == "arm":
        from lightir.lowering.emulation import find

        emulator, why = find()
        if emulator is not None:
            result.checked_on = "qemu-aarch64"
            names = [i["name"] for i in metadata["inputs"]]

            def run(feeds):
                outputs = emulator.run(library, [feeds[name] for name in names])
                return dict(zip(metadata["outputs"], outputs))

            return run
        result.notes.append(f"built for {spec.name}: not executed ({why})")
        return None
    result.notes.append(f"built for {spec.name}: not executed on this machine")
    return None


def _check(model, run, metadata, result, samples, seed, dims, calib=None) -> None:
    """Run the library and onnxruntime on the same inputs; exact tolerance or fail."""
    from lightir.onnx_bridge import OrtModel
    from lightir.pass_base import Contract
    from lightir.verify import compare_outputs, output_scales, rounding_noise, tolerance_for

    fixed = {i["name"]: tuple(i["shape"]) for i in metadata["inputs"]}
    specs = [dataclasses.replace(s, shape=fixed[s.name]) for s in input_specs(model)]
    batches = _calibration_rows(calib, specs, samples)
    result.checked_with = "calibration" if batches else "synthesized"
    if not batches:
        batches = synthesize(specs, samples=samples, seed=seed, dims=dims or {})
    # Integer kernels are held to onnxruntime's integer kernels, not to its float fake-quant
    # (the zoo ResNet's int8 logits: 0.0 from the one, 0.5% from the other, which is also how
    # far onnxruntime's own two runs differ).
    level = "all" if metadata.get("integer_ops") else False
    expected = OrtModel(model, optimize=level).run_all(batches)
    actual = [run(batch) for batch in batches]
    # Outputs on their natural scale: a saturated Sigmoid map of 1e-6 is not a 2% error.
    scales = output_scales(model)
    metrics = compare_outputs(expected, actual, scales)
    noise = rounding_noise(model, batches, expected, seed=seed, scales=scales, optimize=level)
    tolerance = tolerance_for(Contract.exact(), model, noise=noise).rel_error
    worst = max(m.rel_error for m in metrics)
    result.checked, result.rel_error, result.tolerance = True, worst, tolerance
    if not worst <= tolerance:
        error = LoweringError(
            f"the compiled model disagrees with onnxruntime: rel error {worst:.3g} > "
            f"{tolerance:.2g} on output '{max(metrics, key=lambda m: m.rel_error).output}'; "
            "nothing was written"
        )
        error.batches, error.tolerance = batches, tolerance
        raise error


def _stepwise(model, batches, shapes, spec, tuning_db, workdir: Path, failure: LoweringError):
    """Judge an integer build that missed at its outputs per quantized tensor, or raise.

    The cut copy (:mod:`lightir.lowering.stepwise`) is built as the build was, from the same
    tuning database without new trials, and run where the build ran.
    """
    from lightir.lowering.stepwise import cut_points, stepwise_check

    def build(cut, cut_shapes):
        fixed = {**{k: tuple(v) for k, v in shapes.items()}, **cut_shapes}
        executable = _build(cut, fixed, spec, tuning_db, 0, {}, None, None, True, {})
        library = workdir / "stepwise.so"
        _export(executable, library, spec)
        meta = {
            "inputs": [
                {"name": v.name, "shape": list(fixed[v.name]), "dtype": str(v.dtype.numpy())}
                for v in cut.graph.inputs
            ],
            "outputs": [v.name for v in cut.graph.outputs],
            "device": "cuda" if spec.kind == "cuda" else "cpu",
        }
        run = _runner(library, meta, spec, LoweringResult(library, meta, 0.0))
        if run is None:
            raise failure
        return run

    if not cut_points(model):  # integer ops on graph inputs only: nothing to cut at
        raise failure
    try:
        verdict = stepwise_check(model, batches, build, failure.tolerance)
    except LoweringError:
        raise
    except Exception as exc:  # the cut copy would not import or build: the outputs decide
        raise failure from exc
    if not verdict.ok:
        message = str(failure).rsplit(";", 1)[0]
        error = LoweringError(
            f"{message}; per quantized tensor: {verdict.describe()}; nothing was written"
        )
        error.integer_ops = failure.integer_ops
        raise error
    return verdict


def _calibration_rows(calib, specs, samples: int) -> list[dict]:
    """``samples`` one-row feeds from ``calib`` at the build's shapes; [] when it has none."""
    if calib is None:
        return []
    rows = []
    for index in range(min(samples, calib.rows)):
        feed = {s.name: calib.arrays[s.name][index : index + 1] for s in specs}
        if any(feed[s.name].shape != tuple(s.shape) for s in specs):
            return []  # built at other dims than the calibration rows have
        rows.append(feed)
    return rows


ORT_TYPES = {"float32": "float", "float64": "double"}  # numpy name -> onnxruntime's


def _value_spec(value) -> dict:
    """Name, shape (ints, dim names, or None) and numpy dtype name of a graph output."""
    shape = None
    if value.shape is not None:
        shape = [d if isinstance(d, int) else (str(d) if str(d) else None) for d in value.shape]
    dtype = None
    if value.dtype is not None:
        dtype = str(np.dtype(value.dtype.numpy()))
    return {"name": value.name, "shape": shape, "dtype": dtype}


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime's ``NodeArg`` describes it."""

    name: str
    shape: list | None
    type: str | None  # "tensor(float)", as onnxruntime writes it

    @classmethod
    def of(cls, spec: dict) -> NodeArg:
        """From a library's metadata entry."""
        dtype = spec.get("dtype")
        kind = None if dtype is None else f"tensor({ORT_TYPES.get(dtype, dtype)})"
        return cls(spec["name"], spec.get("shape"), kind)


class CompiledModel:
    """A compiled library called like an onnxruntime ``InferenceSession``.

    ``run(output_names, input_feed) -> [arrays]`` with ``get_inputs()`` / ``get_outputs()``,
    so code written against a session runs against the library unchanged; ``run_dict(feeds)``
    returns the outputs by name.
    """

    def __init__(self, library: str | os.PathLike, metadata: dict | None = None) -> None:
        import tvm
        from tvm import relax

        library = Path(library)
        if metadata is None:
            meta_file = metadata_path(library)
            if not meta_file.exists():
                raise InputError(f"{library}: no {meta_file.name} beside it; rebuild the model")
            metadata = json.loads(meta_file.read_text())
        self.metadata = metadata
        self.device = tvm.cuda() if metadata["device"] == "cuda" else tvm.cpu()
        self.vm = relax.VirtualMachine(_load_fresh(library), self.device)
        self.input_names = [i["name"] for i in metadata["inputs"]]
        self.output_names = list(metadata["outputs"])

    def get_inputs(self) -> list[NodeArg]:
        """The inputs, with the shapes the library was built for."""
        return [NodeArg.of(spec) for spec in self.metadata["inputs"]]

    def get_outputs(self) -> list[NodeArg]:
        """The outputs (shape and type unknown in a library built without output_specs)."""
        specs = self.metadata.get("output_specs") or [{"name": n} for n in self.output_names]
        return [NodeArg.of(spec) for spec in specs]

    def run(
        self,
        output_names: Sequence[str] | None,
        input_feed: Mapping[str, np.ndarray] | None = None,
        run_options=None,
    ) -> list[np.ndarray]:
        """The named outputs (all when None), in that order, as a list: onnxruntime's ``run``."""
        if isinstance(output_names, Mapping) or input_feed is None:
            raise UsageError(
                "CompiledModel.run(output_names, input_feed) takes onnxruntime's arguments: "
                "call run(None, feeds), or run_dict(feeds) for outputs by name"
            )
        names = list(self.output_names if output_names is None else output_names)
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise UsageError(
                f"no output {unknown[0]!r}; the library's outputs are {self.output_names}"
            )
        outputs = self.run_dict(input_feed)
        return [outputs[name] for name in names]

    def run_dict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one set of inputs (shapes as built)."""
        import tvm

        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise UsageError(f"missing input {missing[0]!r}; the library takes {self.input_names}")
        for spec in self.metadata["inputs"]:
            got = tuple(np.shape(feeds[spec["name"]]))
            if got != tuple(spec["shape"]):
                raise UsageError(
                    f"input '{spec['name']}' has shape {got}; this library was built for "
                    f"{tuple(spec['shape'])} (rebuild with --dim)"
                )
        args = [
            tvm.runtime.tensor(np.ascontiguousarray(feeds[name]), self.device)
            for name in self.input_names
        ]
        out = self.vm["main"](*args)
        values = [out] if hasattr(out, "numpy") else list(out)
        return {name: value.numpy() for name, value in zip(self.output_names, values)}


def _load_fresh(library: Path):
    """``tvm.runtime.load_module`` of a private copy of ``library``.

    The dynamic loader returns the object already open under a path (or inode): a model
    rebuilt at the same path while the old one was still loaded ran as the old one.
    tools/bench_lowering.py timed untuned libraries as tuned ones this way. A fresh copy is
    loaded, then unlinked (the mapping stays valid).
    """
    import tvm

    handle, private = tempfile.mkstemp(prefix=f"{library.stem}-", suffix=library.suffix)
    os.close(handle)
    try:
        shutil.copyfile(library, private)
        return tvm.runtime.load_module(private)
    finally:
        os.unlink(private)


def load(path: str | os.PathLike) -> CompiledModel:
    """Load a library built by :func:`compile_model` (its ``.json`` must be beside it)."""
    return CompiledModel(path)


def unscheduled_kernels(executable_or_mod) -> list[str]:
    """GPU PrimFuncs with no thread binding (empty when dlight scheduled everything)."""
    import tvm

    names = []
    for gvar, func in executable_or_mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        text = func.script()
        if "threadIdx" not in text and "blockIdx" not in text:
            names.append(gvar.name_hint)
    return names


def cuda_source(executable) -> str:
    """The CUDA C source TVM stores in a CUDA build (compiled at load time on the GPU)."""

    def walk(module):
        yield module
        for imported in module.imports:
            yield from walk(imported)

    return "".join(str(m.inspect_source()) for m in walk(executable.mod) if m.kind == "cuda")


def compile_cuda_source(executable, spec: TargetSpec, workdir: Path) -> str:
    """Compile the build's CUDA source with nvcc for the target's arch; a note of the result.

    No GPU is needed: this proves the generated kernels are valid CUDA for that arch.
    """
    import subprocess

    arch = str(spec.tvm_target().attrs.get("arch", "sm_80"))
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "CUDA source not compiled here: nvcc is not on PATH"
    source = workdir / "kernels.cu"
    source.write_text(cuda_source(executable))
    cubin = workdir / "kernels.cubin"
    proc = subprocess.run(
        [nvcc, f"-arch={arch}", "-cubin", "-w", "-o", str(cubin), str(source)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["?"])[0]
        raise LoweringError(f"nvcc rejects the generated CUDA for {arch}: {first}")
    return f"CUDA source compiled by nvcc for {arch} ({cubin.stat().st_size} bytes of cubin)"


def _versions() -> dict:
    from importlib.metadata import version

    import tvm

    return {"lightir": version("lightir"), "tvm": tvm.__version__}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
