"""The user's metric: what "accuracy" means for a model, measured with a confidence interval.

``--metric NAME`` (``optimize(metric=...)``) scores the original and the optimized model on a
held-out split of the calibration data that no pass fits on (:func:`holdout_rows`), higher is
better. Built-in metrics read the first graph output, shaped ``(samples, classes)``:

* ``top1``: top-1 accuracy against the labels (the ``__labels__`` array of the calibration
  file); 95% Wilson interval;
* ``agreement``: top-1 agreement with the original model's output; 95% Wilson interval;
* ``cosine``: mean per-sample cosine similarity with the original's output (every output,
  flattened per sample); 95% bootstrap interval;
* ``snr``: mean per-sample signal-to-noise ratio in dB against the original's output;
  95% bootstrap interval.

A plug-in is ``module:function`` or ``path/to/file.py:function``. The function is called as
``function(outputs, reference, labels)``: ``outputs`` and ``reference`` map each graph output
name to an array with the samples on axis 0 (the scored model's and the original's), and
``labels`` is the labels array or None. It returns a number, higher is better, or one number
per sample (an array as long as axis 0), whose mean is the metric. Its interval is a bootstrap
over samples (200 resamples, seeded), or a Wilson interval when every per-sample value is 0 or
1. Per-sample values let ``compress`` count only the samples that got worse, as it does for
the built-in metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import onnx_ir as ir

from lightir.errors import InputError, UsageError

BUILT_IN = ("top1", "agreement", "cosine", "snr")
MIN_HOLDOUT = 32  # samples the metric is measured on, where the data allow
BOOTSTRAP = 200
Z95 = 1.959963984540054

Outputs = Mapping[str, np.ndarray]


@dataclass
class Score:
    """A metric's value on some samples, with its 95% confidence interval."""

    value: float
    low: float
    high: float
    samples: int

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)

    def describe(self) -> str:
        """``0.9840 [0.9621, 0.9931]``."""
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass
class Metric:
    """A resolved ``--metric``: its name, whether it needs labels, and how it scores."""

    name: str
    needs_labels: bool
    per_sample: Callable[[Outputs, Outputs, np.ndarray | None], np.ndarray] | None = None
    function: Callable[[Outputs, Outputs, np.ndarray | None], float] | None = None
    proportion: bool = False  # per-sample 0/1: a Wilson interval instead of the bootstrap

    def value(self, outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> float:
        """The metric on these samples, without an interval (cheap: a search scores often)."""
        return float(np.mean(self._values(outputs, reference, labels)))

    def samples(
        self, outputs: Outputs, reference: Outputs, labels: np.ndarray | None
    ) -> np.ndarray | None:
        """One value per sample, where the metric gives them (built-ins, per-sample plug-ins)."""
        values = self._values(outputs, reference, labels)
        return values if isinstance(values, np.ndarray) else None

    def score(self, outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> Score:
        """The metric on these samples (axis 0 of every array), with its interval."""
        count = len(next(iter(outputs.values())))
        values = self._values(outputs, reference, labels)
        if isinstance(values, np.ndarray):
            mean = float(values.mean())
            if self.proportion or np.isin(values, (0.0, 1.0)).all():
                low, high = _wilson(mean, count)
            else:
                low, high = _bootstrap(lambda rows: float(values[rows].mean()), count)
            return Score(mean, low, high, count)

        def resampled(rows: np.ndarray) -> float:
            pick = {k: v[rows] for k, v in outputs.items()}
            ref = {k: v[rows] for k, v in reference.items()}
            return self._call(pick, ref, None if labels is None else labels[rows])

        low, high = _bootstrap(resampled, count)
        return Score(values, low, high, count)

    def _values(self, outputs: Outputs, reference: Outputs, labels) -> float | np.ndarray:
        if self.per_sample is not None:
            return np.asarray(self.per_sample(outputs, reference, labels), np.float64)
        return self._call(outputs, reference, labels)

    def _call(self, outputs: Outputs, reference: Outputs, labels) -> float | np.ndarray:
        try:
            value = self.function(outputs, reference, labels)
        except Exception as exc:
            raise UsageError(
                f"--metric {self.name}: raised {type(exc).__name__}: {exc}; fix the function"
            ) from exc
        if isinstance(value, (np.ndarray, list, tuple)) and np.ndim(value) == 1:
            count = len(next(iter(outputs.values())))
            array = np.asarray(value, np.float64)
            if len(array) != count or not np.isfinite(array).all():
                raise UsageError(
                    f"--metric {self.name}: returned {len(array)} values for {count} samples"
                    f"{'' if np.isfinite(array).all() else ', not all finite'}; return one "
                    "finite number, or one per sample"
                )
            return array
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise UsageError(
                f"--metric {self.name}: returned {type(value).__name__}, not a number; "
                "return a float, higher is better"
            )
        if not math.isfinite(float(value)):
            raise UsageError(f"--metric {self.name}: returned {value}; return a finite number")
        return float(value)


def resolve(spec: str | Callable) -> Metric:
    """The metric named ``spec`` (built-in or ``module:function``), or a callable as a plug-in."""
    if callable(spec):
        name = getattr(spec, "__name__", "metric")
        return Metric(name, needs_labels=False, function=spec)
    if spec in BUILT_IN:
        proportion = spec in ("top1", "agreement")
        per_sample = {"top1": _top1, "agreement": _agreement, "cosine": _cosine, "snr": _snr}
        return Metric(spec, spec == "top1", per_sample[spec], proportion=proportion)
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--metric {spec}: use one of {', '.join(BUILT_IN)} or module:function")
    from lightir.registry import import_module_or_file

    module = import_module_or_file(module_name, "--metric")
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UsageError(f"--metric {spec}: {module_name} has no function {attribute!r}")
    return Metric(spec, needs_labels=False, function=function)


def holdout_rows(rows: int, verified: int) -> int:
    """Samples held out for the metric: a quarter of the data, at least ``MIN_HOLDOUT``.

    At most half of the data, so the passes keep the other half to fit on, and never fewer
    than the verification samples (which come first and are not fit on either).
    """
    wanted = max(MIN_HOLDOUT, rows // 4, verified)
    held = min(wanted, rows // 2) if rows >= 2 * verified else verified
    if held < 2:
        raise InputError(
            f"--metric needs at least 2 held-out samples; the calibration data has {rows} "
            "(give at least 4)"
        )
    return held


def default_for(output: ir.Value) -> str:
    """The metric used when a search is given none: agreement on logits, else cosine."""
    shape = output.shape
    return "agreement" if shape is not None and len(shape) == 2 else "cosine"


def _first(outputs: Outputs) -> tuple[str, np.ndarray]:
    name, array = next(iter(outputs.items()))
    if array.ndim != 2:
        raise UsageError(
            f"the built-in metrics read the first output as (samples, classes); '{name}' has "
            f"shape {array.shape}: give --metric module:function"
        )
    return name, array


def _top1(outputs: Outputs, reference: Outputs, labels: np.ndarray | None) -> np.ndarray:
    _, array = _first(outputs)
    return (array.argmax(axis=1) == np.asarray(labels).reshape(-1)).astype(np.float64)


def _agreement(outputs: Outputs, reference: Outputs, labels) -> np.ndarray:
    name, array = _first(outputs)
    return (array.argmax(axis=1) == reference[name].argmax(axis=1)).astype(np.float64)


def _flat(outputs: Outputs) -> np.ndarray:
    arrays = [np.asarray(a, np.float64).reshape(len(a), -1) for a in outputs.values()]
    return np.concatenate(arrays, axis=1)


def _cosine(outputs: Outputs, reference: Outputs, labels) -> np.ndarray:
    a, b = _flat(outputs), _flat({k: reference[k] for k in outputs})
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)


def _snr(outputs: Outputs, reference: Outputs, labels) -> np.ndarray:
    a, b = _flat(outputs), _flat({k: reference[k] for k in outputs})
    noise = ((a - b) ** 2).sum(axis=1)
    signal = (b**2).sum(axis=1)
    ratio = signal / np.maximum(noise, np.finfo(np.float64).tiny)
    return np.minimum(10.0 * np.log10(np.maximum(ratio, np.finfo(np.float64).tiny)), 200.0)


def _wilson(p: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` over ``n`` samples."""
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _bootstrap(statistic: Callable[[np.ndarray], float], n: int) -> tuple[float, float]:
    """95% percentile interval of ``statistic`` over ``BOOTSTRAP`` resamples of ``n`` rows."""
    rng = np.random.default_rng(0)
    values = [statistic(rng.integers(0, n, n)) for _ in range(BOOTSTRAP)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))
