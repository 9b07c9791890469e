"""The one place where lightir turns its onnx-ir model into protobuf for onnx and onnxruntime.

Weights are never copied for a check: :func:`weightless_proto` serializes the graph with every
large initializer replaced by an external-data placeholder; :func:`as_graph_inputs` turns the
placeholders into typed graph inputs for ``onnx.checker``, shape inference and onnxruntime, and
:class:`OrtModel` feeds the real arrays as inputs, which onnxruntime reads in place. A
memory-mapped weight therefore stays memory-mapped through verification.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

try:
    import onnxruntime as ort
except ImportError as exc:  # not a dependency: onnxruntime-gpu or -openvino provide it too
    raise ImportError(
        "lightir runs models with onnxruntime, and none is installed: pip install "
        "'lightir[cpu]', or one of onnxruntime-gpu / onnxruntime-openvino (any one: they "
        "install the same module)"
    ) from exc

logger = logging.getLogger(__name__)

PLACEHOLDER_LOCATION = "lightir-weights-held-in-memory"
_SMALL_TENSOR_BYTES = 1024
_ORT_NUMPY_DTYPES = {
    ir.DataType.FLOAT,
    ir.DataType.DOUBLE,
    ir.DataType.FLOAT16,
    ir.DataType.INT8,
    ir.DataType.UINT8,
    ir.DataType.INT16,
    ir.DataType.UINT16,
    ir.DataType.INT32,
    ir.DataType.UINT32,
    ir.DataType.INT64,
    ir.DataType.UINT64,
    ir.DataType.BOOL,
}


@contextlib.contextmanager
def weightless(model: ir.Model) -> Iterator[dict[str, ir.TensorProtocol]]:
    """Temporarily swap large main-graph initializers for placeholders.

    Yields the swapped-out tensors by name; the model is restored on exit.
    """
    main_inputs = set(model.graph.inputs)
    held: dict[str, ir.TensorProtocol] = {}
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for graph in model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if tensor is None:
                    continue
                external = isinstance(tensor, ir.ExternalTensor)
                if (
                    graph is model.graph
                    and value not in main_inputs
                    and tensor.dtype in _ORT_NUMPY_DTYPES
                    and (external or tensor.nbytes > _SMALL_TENSOR_BYTES)
                ):
                    replacement: ir.TensorProtocol = ir.ExternalTensor(
                        PLACEHOLDER_LOCATION,
                        offset=0,
                        length=tensor.nbytes,
                        dtype=tensor.dtype,
                        shape=tensor.shape,
                        name=value.name,
                    )
                    held[value.name] = tensor
                elif external:
                    # Subgraph initializers and exotic dtypes travel inside the proto.
                    replacement = ir.tensor(tensor.numpy(), dtype=tensor.dtype, name=value.name)
                else:
                    continue
                swapped.append((value, tensor))
                value.const_value = replacement
        yield held
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


def weightless_proto(model: ir.Model) -> tuple[onnx.ModelProto, dict[str, ir.TensorProtocol]]:
    """The model as a protobuf without its large weights, and those weights by name."""
    with weightless(model) as held:
        proto = ir.serde.serialize_model(model)
    return proto, held


def as_graph_inputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a weightless proto whose placeholders became typed graph inputs.

    ``onnx.checker`` and shape inference want to open external data; as inputs they are
    checked by type and shape alone.
    """
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    graph = result.graph
    kept = []
    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL and any(
            e.key == "location" and e.value == PLACEHOLDER_LOCATION for e in init.external_data
        ):
            graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims)
            )
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return result


def onnx_check(proto: onnx.ModelProto) -> None:
    """Run ``onnx.checker`` with strict shape inference on a weightless model proto."""
    onnx.checker.check_model(as_graph_inputs(proto), full_check=True)


def infer_shapes(proto: onnx.ModelProto) -> dict[str, tuple]:
    """Shapes of every value onnx shape inference can resolve (symbolic dims as names)."""
    inferred = onnx.shape_inference.infer_shapes(
        as_graph_inputs(proto), strict_mode=False, data_prop=True
    )
    shapes: dict[str, tuple] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        shapes[info.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor_type.shape.dim
        )
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


class OrtModel:
    """An onnxruntime session over an onnx-ir model that reads the model's weights in place.

    Large weights are declared as graph inputs and fed with every run: onnxruntime wraps a fed
    numpy array without copying it, whereas initializers handed over at session creation
    (``add_external_initializers``) are copied into the session (measured: +1x the weights).
    """

    def __init__(
        self,
        model: ir.Model,
        *,
        threads: int = 0,
        optimize: bool | str = False,
        probes: Mapping[str, ir.Value] | None = None,
    ) -> None:
        """Open a session; ``probes`` (``{key: value}``) also returns those inner values.

        ``optimize``: False runs the graph as written (a QDQ model as float fake-quant),
        True with onnxruntime's basic rewrites, ``"all"`` with all of them (a QDQ model on
        onnxruntime's integer kernels).

        The verifier probes the values before squashing output ops
        (:func:`lightir.verify.probe_values`), under keys such as ``"scores <before Sigmoid>"``.
        """
        extra = {
            key: value
            for key, value in (probes or {}).items()
            if value.dtype is not None and value.name
        }
        outputs = model.graph.outputs
        count = len(outputs)
        outputs.extend(extra.values())
        try:
            proto, held = weightless_proto(model)
        finally:
            while len(outputs) > count:
                outputs.pop()
        self.keys = {value.name: key for key, value in extra.items()}
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimize == "all"  # QDQ fused into onnxruntime's integer kernels
            else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            if optimize
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # Without the arena, activation memory goes back to the system after each run instead
        # of staying reserved for the session's life (measured: lower peak, same speed).
        options.enable_cpu_mem_arena = False
        self.weights = {name: np.ascontiguousarray(t.numpy()) for name, t in held.items()}
        self.session = ort.InferenceSession(
            as_graph_inputs(proto).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs() if i.name not in self.weights]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns outputs by name."""
        results = self.session.run(self.output_names, {**self.weights, **feeds})
        return {self.keys.get(name, name): array for name, array in zip(self.output_names, results)}

    def run_all(self, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run every batch in order."""
        return [self.run(batch) for batch in batches]

    def run_rows(self, batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Run every batch; each output with the samples of all batches on axis 0."""
        runs = self.run_all(batches)
        return {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}


class Probe:
    """Runs a structural copy of a model (weights shared) with extra values as outputs."""

    def __init__(self, model: ir.Model, names: Sequence[str]) -> None:
        copy = model.clone()
        by_name = {v.name: v for n in copy.graph for v in n.outputs}
        present = {v.name for v in copy.graph.outputs}
        for name in names:
            if name not in present and name in by_name:  # graph inputs come from the batches
                copy.graph.outputs.append(by_name[name])
        self.names = list(names)
        self.session = OrtModel(copy)

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The probed values on one batch."""
        outputs = self.session.run(batch)
        return {name: outputs[name] if name in outputs else batch[name] for name in self.names}


CAPTURE_BYTES = 64 << 20  # activations one run of :func:`capture` may hold (estimated)


def value_bytes(value: ir.Value) -> int:
    """Bytes of one sample of ``value`` (axis 0 dropped; unknown dims count as 1)."""
    shape = value.shape
    dims = list(shape)[1:] if shape is not None else []
    size = 1
    for dim in dims:
        size *= dim if isinstance(dim, int) and dim > 0 else 1
    itemsize = value.dtype.itemsize if value.dtype is not None else 4
    return int(size * itemsize)  # itemsize is a float (int4 types have halves)


def row_parts(
    batches: Sequence[Mapping[str, np.ndarray]], row_bytes: int, limit: int
) -> Iterator[dict[str, np.ndarray]]:
    """``batches`` cut along axis 0 into parts whose rows hold at most ``limit`` bytes.

    ``row_bytes`` is what one row makes the caller hold; a part has one row at least.
    """
    rows = max(1, limit // max(row_bytes, 1))
    for batch in batches:
        count = len(next(iter(batch.values())))
        for start in range(0, count, rows):
            yield {name: array[start : start + rows] for name, array in batch.items()}


def capture(
    model: ir.Model, names: Sequence[str], batches: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Values ``names`` of ``model`` on ``batches`` (concatenated along axis 0).

    The batches run in parts of at most ``CAPTURE_BYTES`` of activations (every value of the
    model counted, an upper bound on what onnxruntime holds during a run): a compress search
    on ResNet-50 peaked while one of its refits ran 8 samples at once.
    """
    probe = Probe(model, names)
    results: dict[str, list[np.ndarray]] = {name: [] for name in names}
    row_bytes = sum(value_bytes(v) for node in model.graph for v in node.outputs)
    for batch in row_parts(batches, row_bytes, CAPTURE_BYTES):
        for name, array in probe.run(batch).items():
            results[name].append(array)
    del probe
    # One value joined at a time, its parts dropped at once: twice the values never coexist.
    return {name: np.concatenate(results.pop(name), axis=0) for name in list(results)}
