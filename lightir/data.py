"""Inputs for verification and calibration: from a ``.npz`` file, or synthesized.

Calibration file (``--calib FILE.npz``): one array per model input, keyed by the input's name
(a file with a single array may use any key for a single-input model). Axis 0 of each array
is the input's batch axis with all samples concatenated; the other axes must match the
input's static dims. Batches are consecutive slices of axis 0: of the model's batch size when
it is fixed, else of ``batch_size`` rows. An optional ``__labels__`` array holds one label per
sample (axis 0), for metrics such as top-1 accuracy (:mod:`lightir.metrics`).

Synthesized inputs (no file): float inputs draw from a standard normal clipped to
[-2.5, 2.5], the range of ImageNet-normalized images and of most normalized features; integer
inputs draw from [0, 10); bool inputs are fair coins. Dynamic dims: a dynamic *leading* dim
(the batch) takes the number of samples, so one onnxruntime call checks several samples and
batch handling at once; any other dynamic dim takes ``DEFAULT_DYNAMIC_DIM`` (64). Override by
name with ``dims={"height": 224}`` (``--dim height=224``).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from lightir.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_DYNAMIC_DIM = 64
LABELS_KEY = "__labels__"


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and shape (ints, or names/None for dynamic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple

    @property
    def dynamic_batch(self) -> bool:
        """Whether axis 0 is dynamic."""
        return bool(self.shape) and not isinstance(self.shape[0], int)


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are left out)."""
    specs = []
    for value in model.graph.inputs:
        if value.const_value is not None or value.name in model.graph.initializers:
            continue
        if value.dtype is None or value.shape is None:
            raise InputError(
                f"input '{value.name}' has no declared type or shape; re-export the model "
                "with input shapes"
            )
        shape = tuple(d if isinstance(d, int) else (d.value or None) for d in value.shape)
        specs.append(InputSpec(value.name, np.dtype(value.dtype.numpy()), shape))
    return specs


def concrete_shape(spec: InputSpec, batch: int, dims: dict[str, int]) -> tuple[int, ...]:
    """Fix the dynamic dims of ``spec`` (see module docstring)."""
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            shape.append(dim)
        elif isinstance(dim, str) and dim in dims:
            shape.append(dims[dim])
        elif axis == 0:
            shape.append(batch)
        else:
            shape.append(DEFAULT_DYNAMIC_DIM)
    return tuple(shape)


def synthesize(
    specs: list[InputSpec], samples: int = 2, dims: dict[str, int] | None = None, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Seeded inputs: one batch of ``samples`` when the batch is dynamic, else ``samples`` runs."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    all_dynamic = all(spec.dynamic_batch for spec in specs)
    runs, batch = (1, samples) if specs and all_dynamic else (samples, 1)
    batches = []
    for _ in range(runs):
        feeds = {}
        for spec in specs:
            shape = concrete_shape(spec, batch, dims)
            feeds[spec.name] = draw(rng, spec.dtype, shape)
        batches.append(feeds)
    return batches


def draw(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Seeded values of ``dtype`` and ``shape`` as synthesized inputs have them."""
    if np.issubdtype(dtype, np.floating):
        return np.clip(rng.standard_normal(shape), -2.5, 2.5).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, shape).astype(dtype)
    raise InputError(f"cannot synthesize inputs of dtype {dtype}; pass --calib FILE.npz")


class CalibrationData:
    """Samples read from a ``.npz`` file and checked against the model's inputs."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        source: str = "<memory>",
        labels: np.ndarray | None = None,
    ) -> None:
        arrays = dict(arrays)
        if labels is None:
            labels = arrays.pop(LABELS_KEY, None)
        self.arrays = arrays
        self.source = source
        self.labels = labels

    @classmethod
    def from_npz(cls, path: str | Path) -> CalibrationData:
        """Read a ``.npz`` file (not memory-mapped: npz members are compressed or zipped)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"--calib {path}: no such file")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise InputError(f"--calib {path}: not a readable .npz file ({exc})") from exc
        if not set(arrays) - {LABELS_KEY}:
            raise InputError(f"--calib {path}: the file holds no input arrays")
        return cls(arrays, str(path))

    def bind(self, specs: list[InputSpec]) -> CalibrationData:
        """Match arrays to ``specs`` by name and check dtypes and static dims."""
        arrays = dict(self.arrays)
        if len(specs) == 1 and len(arrays) == 1 and specs[0].name not in arrays:
            arrays = {specs[0].name: next(iter(arrays.values()))}
        bound = {}
        rows = None
        for spec in specs:
            if spec.name not in arrays:
                raise InputError(
                    f"--calib {self.source}: no array for input '{spec.name}' "
                    f"(arrays: {', '.join(arrays)})"
                )
            array = arrays[spec.name]
            if array.ndim != len(spec.shape):
                raise InputError(
                    f"--calib {self.source}: '{spec.name}' has {array.ndim} axes, the input "
                    f"has {len(spec.shape)} {spec.shape}"
                )
            for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
                if axis > 0 and isinstance(want, int) and got != want:
                    raise InputError(
                        f"--calib {self.source}: '{spec.name}' axis {axis} is {got}, the "
                        f"model expects {want}"
                    )
            if rows is not None and array.shape[0] != rows:
                raise InputError(f"--calib {self.source}: inputs have different sample counts")
            rows = array.shape[0]
            bound[spec.name] = array.astype(spec.dtype, copy=False)
        if self.labels is not None and len(self.labels) != rows:
            raise InputError(
                f"--calib {self.source}: {LABELS_KEY} has {len(self.labels)} labels for {rows} "
                "samples; give one label per sample"
            )
        result = CalibrationData(bound, self.source, self.labels)
        result.specs = specs  # type: ignore[attr-defined]
        return result

    def tail(self, start: int) -> CalibrationData:
        """The samples from row ``start`` on (same specs)."""
        labels = None if self.labels is None else self.labels[start:]
        arrays = {k: v[start:] for k, v in self.arrays.items()}
        result = CalibrationData(arrays, self.source, labels)
        result.specs = getattr(self, "specs", None)  # type: ignore[attr-defined]
        return result

    def head(self, stop: int) -> CalibrationData:
        """The samples before row ``stop`` (same specs)."""
        labels = None if self.labels is None else self.labels[:stop]
        arrays = {k: v[:stop] for k, v in self.arrays.items()}
        result = CalibrationData(arrays, self.source, labels)
        result.specs = getattr(self, "specs", None)  # type: ignore[attr-defined]
        return result

    @property
    def rows(self) -> int:
        """Number of samples (rows of axis 0)."""
        return next(iter(self.arrays.values())).shape[0]

    def batches(
        self, batch_size: int = 8, limit: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive slices of axis 0; a fixed model batch size takes precedence.

        With a dynamic batch, the rows left after the whole batches come as a last, smaller
        batch (no sample is silently left out); a fixed batch takes whole batches only.
        """
        specs = getattr(self, "specs", None)
        fixed = bool(specs) and not specs[0].dynamic_batch
        if fixed:
            batch_size = specs[0].shape[0]
        rows = self.rows if limit is None else min(self.rows, limit)
        whole = rows - rows % batch_size
        for start in range(0, whole, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.arrays.items()}
        if whole < rows and not fixed:
            yield {k: v[whole:rows] for k, v in self.arrays.items()}
