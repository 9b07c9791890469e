from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import lightir
from lightir import io as lightir_io
from lightir import zoo
from lightir.errors import InputError
from lightir.testing import assert_outputs_close


def save_with_external(tmp_path, name="model.onnx"):
    model = zoo.build("vgg")
    path = tmp_path / name
    ir.save(model, path, external_data=name + ".data")
    return model, path


def rewrite_locations(path, location):
    proto = onnx.load(str(path), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(path))


def test_external_weights_stay_memory_mapped(tmp_path):
    original, path = save_with_external(tmp_path)
    model = lightir.load(path)
    tensors = [v.const_value for v in model.graph.initializers.values()]
    assert any(isinstance(t, ir.ExternalTensor) for t in tensors)
    assert_outputs_close(original, model, rtol=0)


def test_save_round_trip_and_external_data_rewritten_elsewhere(tmp_path):
    original, path = save_with_external(tmp_path)
    model = lightir.load(path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    lightir.save(model, other / "copy.onnx")
    assert (other / "copy.onnx.data").exists()  # not a reference to the source's data file
    assert_outputs_close(original, lightir.load(other / "copy.onnx"), rtol=0)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.data", "sub/../../outside.data"])
def test_external_data_outside_model_dir_is_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "outside.data").write_bytes(b"\0" * 10_000_000)
    _, path = save_with_external(inner)
    rewrite_locations(path, location)
    with pytest.raises(InputError) as info:
        lightir.load(path)
    assert "only files inside" in str(info.value) or "outside the model's directory" in str(
        info.value
    )


def test_external_data_symlink_escaping_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    _, path = save_with_external(inner)
    data = inner / "model.onnx.data"
    outside = tmp_path / "real.data"
    data.rename(outside)
    os.symlink(outside, data)
    with pytest.raises(InputError, match="outside the model's directory"):
        lightir.load(path)


def test_missing_and_truncated_external_data(tmp_path):
    _, path = save_with_external(tmp_path)
    data = tmp_path / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(InputError, match="truncated"):
        lightir.load(path)
    data.unlink()
    with pytest.raises(InputError, match="does not exist"):
        lightir.load(path)


def test_save_refuses_to_overwrite_the_input(tmp_path):
    path = tmp_path / "m.onnx"
    lightir.save(zoo.build("vgg"), path)
    before = path.read_bytes()
    model = lightir.load(path)
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        lightir.save(model, path)
    assert path.read_bytes() == before


def test_save_is_atomic_when_serialization_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.onnx"

    def broken_save(*args, **kwargs):
        with open(args[1], "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(
        lightir_io, "_write_streaming", lambda model, path: broken_save(model, path)
    )
    with pytest.raises(InputError, match="disk full"):
        lightir.save(zoo.build("vgg"), path)
    assert list(tmp_path.iterdir()) == []


def test_forced_external_data(tmp_path):
    model = zoo.build("vgg")
    lightir_io.save(model, tmp_path / "x.onnx", external_data=True)
    assert (tmp_path / "x.onnx.data").stat().st_size > 1_000_000
    assert (tmp_path / "x.onnx").stat().st_size < 100_000
    assert_outputs_close(model, lightir.load(tmp_path / "x.onnx"), rtol=0)


def test_file_without_graph_is_refused(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="holds no ONNX graph"):
        lightir.load(path)


def test_external_data_chosen_automatically_past_the_protobuf_limit(tmp_path, monkeypatch):
    # The real limit is 2 GB; lowering it exercises the same decision on a small model.
    monkeypatch.setattr(lightir_io, "PROTOBUF_LIMIT_BYTES", 1_000_000)
    model = zoo.build("vgg")
    lightir.save(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    monkeypatch.setattr(lightir_io, "PROTOBUF_LIMIT_BYTES", 10_000_000)
    lightir.save(model, tmp_path / "small.onnx")
    assert not (tmp_path / "small.onnx.data").exists()
    assert_outputs_close(model, lightir.load(tmp_path / "big.onnx"), rtol=0)


def test_row_parts_cut_every_batch_in_order_within_the_limit():
    from lightir.onnx_bridge import row_parts

    batches = [{"x": np.arange(5)[:, None] * np.ones((1, 3))}, {"x": np.arange(5, 8)[:, None]}]
    parts = list(row_parts(batches, row_bytes=100, limit=250))  # two rows a part
    assert [len(p["x"]) for p in parts] == [2, 2, 1, 2, 1]
    assert np.concatenate([p["x"][:, 0] for p in parts]).tolist() == list(range(8))
    assert [len(p["x"]) for p in row_parts(batches, row_bytes=100, limit=1)] == [1] * 8
