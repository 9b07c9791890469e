"""Load and save models through onnx-ir, with lightir's external-data policy.

Loading
  * weights stored as external data stay memory-mapped (onnx-ir's ``ExternalTensor``);
  * an external-data location must resolve (symlinks followed) to a file inside the model's
    own directory: absolute paths, ``..`` escapes and links that leave the directory are
    refused, as is data that ends past the end of its file;
  * anything that is not a readable ONNX model raises :class:`~lightir.errors.InputError`
    with a one-line message naming the file.

Saving
  * the output is written to a temporary file in the destination directory and renamed
    into place, so a failed save never leaves a partial model;
  * weights go to an external data file (``OUT.onnx.data``) automatically when the model
    would not fit a 2 GB protobuf, or when the model still references external data;
  * the model's source file (and its external data) is never overwritten.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from lightir.errors import InputError

logger = logging.getLogger(__name__)

# Protobuf refuses messages of 2 GiB; keep a margin for the graph itself.
PROTOBUF_LIMIT_BYTES = 2**31 - 64 * 2**20
SOURCE_PATH_KEY = "lightir.source_path"


def load(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model file into onnx-ir, checking its external data first.

    Args:
        path: the ``.onnx`` file.

    Returns:
        The model; external weights are memory-mapped, not read.

    Raises:
        InputError: the file is missing, not ONNX, truncated, or its external data
            points outside the model's directory.

    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; give the path of a .onnx model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InputError(
            f"{path}: not a readable ONNX model ({_first_line(exc)}); "
            "check that the file is complete and really ONNX"
        ) from exc
    if not proto.HasField("graph") or (len(proto.graph.node) == 0 and not proto.graph.output):
        raise InputError(
            f"{path}: the file parsed but holds no ONNX graph (truncated or not a model); "
            "re-export the model"
        )
    if not proto.opset_import:
        raise InputError(f"{path}: the model declares no opset; re-export it with an opset")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx-ir raises several types on malformed protos
        raise InputError(
            f"{path}: the ONNX graph is malformed ({_first_line(exc)}); re-export the model"
        ) from exc
    del proto
    try:
        _materialize(model)
    except ValueError as exc:  # numpy cannot reshape the bytes to the declared dims
        raise InputError(
            f"{path}: a tensor's declared shape does not match its data ({_first_line(exc)}); "
            "re-export the model"
        ) from exc
    base_dir = path.resolve().parent
    ir.external_data.set_base_dir(model.graph, str(base_dir))
    check_external_data(model, base_dir, path)
    model.meta[SOURCE_PATH_KEY] = str(path.resolve())
    return model


def iter_tensors(model: ir.Model):
    """Yield ``(owner, tensor)`` for every initializer and tensor attribute, subgraphs included."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield f"initializer '{value.name}'", value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None:
                    yield f"attribute '{attr.name}' of node '{node.name}'", attr.value


def check_external_data(model: ir.Model, base_dir: Path, model_path: Path) -> None:
    """Refuse external data that is absent or lies outside ``base_dir``."""
    base_dir = base_dir.resolve()
    for owner, tensor in iter_tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = str(tensor.location)
        if os.path.isabs(location):
            raise InputError(
                f"{model_path}: {owner} has external data at absolute path '{location}'; "
                "only files inside the model's directory are read: move the data next to "
                "the model and store a relative location"
            )
        target = (base_dir / location).resolve()
        if base_dir not in target.parents:
            raise InputError(
                f"{model_path}: {owner} has external data '{location}' outside the model's "
                f"directory {base_dir}; move the data next to the model"
            )
        if not target.is_file():
            raise InputError(
                f"{model_path}: {owner} needs external data file '{location}', which does not "
                "exist; copy it next to the model"
            )
        end = (tensor.offset or 0) + (tensor.length or tensor.nbytes)
        if end > target.stat().st_size:
            raise InputError(
                f"{model_path}: {owner} reads bytes up to {end} of '{location}', which has "
                f"only {target.stat().st_size}; the data file is truncated or does not match"
            )


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of all weights and tensor attributes of the model."""
    return sum(tensor.nbytes for _, tensor in iter_tensors(model))


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write ``model`` to ``path`` atomically.

    Args:
        model: the model; it is not modified.
        path: destination ``.onnx`` file.
        external_data: ``True`` writes weights to ``PATH.data`` beside the model, ``False``
            embeds them, ``None`` (default) decides: external past the 2 GB protobuf limit or
            when the model references external data.

    Raises:
        InputError: ``path`` is the model's own source file or a directory, or it cannot be
            written.

    """
    path = Path(path)
    source = model.meta.get(SOURCE_PATH_KEY)
    if source is not None and path.resolve() == Path(source):
        raise InputError(
            f"{path}: refusing to overwrite the input model; choose another output path"
        )
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name such as {path}/model.onnx")
    directory = path.resolve().parent
    if not directory.is_dir():
        raise InputError(f"{path}: directory {directory} does not exist; create it first")
    has_external = any(isinstance(t, ir.ExternalTensor) for _, t in iter_tensors(model))
    if external_data is None:
        external_data = tensor_bytes(model) > PROTOBUF_LIMIT_BYTES
    # A reference to the source's data file would dangle next to the output: rewrite it.
    external_data = external_data or has_external
    data_name = path.name + ".data"
    if external_data and source is not None:
        for _, tensor in iter_tensors(model):
            if isinstance(tensor, ir.ExternalTensor) and Path(tensor.path).resolve() == (
                directory / data_name
            ):
                raise InputError(
                    f"{path}: its data file {data_name} is the input model's weights; "
                    "choose another output name"
                )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    data_path = directory / data_name
    data_existed = data_path.exists()
    try:
        if external_data:
            ir.save(model, tmp_name, external_data=data_name)
        else:
            _write_streaming(model, tmp_name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except InputError:
        raise
    except Exception as exc:
        if external_data and not data_existed and data_path.exists():
            data_path.unlink()
        raise InputError(f"{path}: cannot write the model ({_first_line(exc)})") from exc
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    logger.info("wrote %s%s", path, f" (+ {data_name})" if external_data else "")


def _write_streaming(model: ir.Model, path: str) -> None:
    """Write an embedded-weights model one tensor at a time.

    ``ir.save`` builds the whole protobuf and its serialized bytes, which costs twice the
    weights on top of the model. Protobuf merges repeated occurrences of an embedded message
    field, so the model without its large weights followed by one
    ``ModelProto(graph=GraphProto(initializer=[t]))`` per weight parses as the full model;
    memory stays at one tensor above the model.
    """
    from lightir.onnx_bridge import PLACEHOLDER_LOCATION, weightless

    with weightless(model) as held:
        skeleton = ir.serde.serialize_model(model)
    kept = [
        init
        for init in skeleton.graph.initializer
        if not any(e.value == PLACEHOLDER_LOCATION for e in init.external_data)
    ]
    del skeleton.graph.initializer[:]
    skeleton.graph.initializer.extend(kept)
    with open(path, "wb") as handle:
        handle.write(skeleton.SerializeToString())
        del skeleton
        for tensor in held.values():
            piece = onnx.ModelProto()
            piece.graph.initializer.append(ir.serde.serialize_tensor(tensor))
            handle.write(piece.SerializeToString())


def _materialize(model: ir.Model) -> None:
    """Replace protobuf-backed tensors by numpy-backed ones so the parsed protobuf is freed.

    A ``TensorProtoTensor`` keeps the whole parsed model alive and copies its bytes on every
    ``numpy()`` call; after this, each weight exists once, as an array.
    """
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.TensorProtoTensor):
                try:
                    array = tensor.numpy()
                except ValueError as exc:
                    raise ValueError(f"initializer '{value.name}': {_first_line(exc)}") from exc
                value.const_value = ir.Tensor(array, dtype=tensor.dtype, name=value.name)
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR and isinstance(
                    attr.value, ir.TensorProtoTensor
                ):
                    tensor = attr.value
                    node.attributes[name] = ir.AttrTensor(
                        name, ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)
                    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
