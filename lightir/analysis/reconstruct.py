"""Least-squares reconstruction of layers after their inputs were pruned or approximated.

After channels are removed, a consuming layer sees fewer inputs. Following He et al. (2017)
and ThiNet, its weights and bias are refit on real data, and the target is the *original*
model's output of that layer. The input is the *current* model's input to it, so error
accumulated upstream is corrected rather than propagated. Layers are refit in topological
order:

    min_W ||X' W + b - Y||^2 + lam ||W - W0||^2     (lam = r * mean diag(X'^T X'))

The ridge pulls toward the layer's current weights ``W0`` (the pruned or approximated ones),
not toward zero. With more samples than inputs the two agree to within lam; with fewer (a
Gemm after a Flatten sees one row per image: MTCNN R-Net's 576 inputs, 24 calibration
crops) a pull toward zero keeps only what lies in the samples' span and zeroes the rest of
the layer, while the pull toward ``W0`` corrects the residual in that span and leaves the
rest as it was.

With at least two rows per unknown, ``r = 1e-4``. With fewer (a Gemm after a Flatten, a
late conv on small crops) the fit is ill posed and ``r`` is validated: the layer is fit on
half of the rows at each r of ``RIDGE_GRID`` (1e-4 ... 100) and scored on the other half;
the best r is used for the fit on all rows, and a layer no r helps keeps its weights. A fixed
small r interpolated MTCNN R-Net's last conv (144 patch rows for 160 inputs; its box output
fell from cosine 0.95 to 0.69). Validating well-posed layers as well chose strong ridges
that were better on held-out rows of the same images and worse on other images (PP-OCRv6
tiny rec char accuracy 0.94 -> 0.85), so they keep the small one.

For a Conv, X' holds im2col patches at up to ``MAX_ROWS`` sampled output positions; for a
MatMul on ``[..., C]`` activations every leading position is a row.

When the layer's only consumer is a ReLU (or a Clip with constant bounds), ``through_act``
fits what the network actually sees, ``act(X' W + b) ~ act(Y)``, as Zhang et al. (2016) do
for their asymmetric reconstruction. Outputs the activation clamps do not need to be matched,
only kept on the clamped side. Alternating minimisation with a slack target Z:

    Z = Y where lo < Y < hi;  min(X'W + b, lo) where Y <= lo;  max(X'W + b, hi) where Y >= hi
    W = argmin ||X' W + b - Z||^2 + lam ||W||^2

Each step lowers ``||X'W + b - Z||^2``, which equals the activation loss on clamped outputs and
bounds it above elsewhere. Each iteration is one solve with the same Gram matrix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from lightir import progress
from lightir.analysis.cost import inferred_shapes
from lightir.ir_util import clone_model, crossing, cut_graph, has_subgraphs
from lightir.onnx_bridge import OrtModel, capture, value_bytes
from lightir.rewrite import add_initializer

logger = logging.getLogger(__name__)

MAX_ROWS = 16384
# The original model's layer outputs held at once by a refit; each chunk costs one run of
# the original. At 256 MB they were the largest thing a compress search on ResNet-50 held
# (32 samples: 255 of the 385 MB of arrays at its peak); 96 MB costs a few more runs.
TARGET_BYTES = 96 << 20
# The current model's values at the last cut, on every row, from which the next layer's input
# is computed (:class:`_Walk`); past this a layer's input is captured from a whole run.
FRONTIER_BYTES = 96 << 20
RIDGE = 1e-4


def conv_out_size(shape: tuple[int, ...], node: ir.Node) -> tuple[int, int]:
    """Output height and width of Conv ``node`` on an input of ``shape`` (explicit pads)."""
    kh, kw = node.inputs[1].const_value.shape.numpy()[2:]
    sh, sw = node.attributes.get_ints("strides", [1, 1])
    dh, dw = node.attributes.get_ints("dilations", [1, 1])
    top, left, bottom, right = node.attributes.get_ints("pads", [0, 0, 0, 0])
    out_h = (shape[2] + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (shape[3] + left + right - (kw - 1) * dw - 1) // sw + 1
    return int(out_h), int(out_w)


def conv_patches(
    x: np.ndarray, node: ir.Node, seed: int = 0, limit: int | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """im2col rows of ``x`` for Conv ``node`` at sampled output positions.

    Returns the patches (P, C * kh * kw) and the (n, i, j) indices of the positions: all of
    them, or ``MAX_ROWS`` sampled with ``seed``; with ``limit``, a further seeded sample of
    that many, drawn before any patch is built (a 512-channel 3x3 conv's 16384 rows are
    300 MB).
    """
    kh, kw = node.inputs[1].const_value.shape.numpy()[2:]
    sh, sw = node.attributes.get_ints("strides", [1, 1])
    dh, dw = node.attributes.get_ints("dilations", [1, 1])
    top, left, bottom, right = node.attributes.get_ints("pads", [0, 0, 0, 0])
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    extent_h, extent_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    windows = sliding_window_view(padded, (extent_h, extent_w), axis=(2, 3))
    out_h, out_w = conv_out_size(x.shape, node)
    total = x.shape[0] * out_h * out_w
    rng = np.random.default_rng(seed)
    flat = np.arange(total) if total <= MAX_ROWS else rng.choice(total, MAX_ROWS, replace=False)
    if limit is not None and len(flat) > limit:
        flat = flat[np.random.default_rng(seed).choice(len(flat), limit, replace=False)]
    n, rest = np.divmod(flat, out_h * out_w)
    i, j = np.divmod(rest, out_w)
    patches = windows[n, :, i * sh, j * sw][:, :, ::dh, ::dw]  # (P, C, kh, kw)
    return patches.reshape(len(flat), -1), (n, i, j)


ACT_ITERATIONS = 10


def ridge_solve(
    a: np.ndarray,
    y: np.ndarray,
    with_bias: bool = True,
    bounds: tuple[float, float] | None = None,
    prior: np.ndarray | None = None,
    ridge: float = RIDGE,
) -> np.ndarray:
    """Solve ``[a, 1] @ w ~ y`` with ridge regularization (float64).

    With ``bounds`` (lo, hi), fit ``clip([a, 1] @ w, lo, hi) ~ clip(y, lo, hi)`` instead
    (see the module docstring). ``prior`` (the shape of the solution) is what the ridge pulls
    toward; zero when None.
    """
    a = a.astype(np.float64)
    y = y.astype(np.float64)
    if with_bias:
        a = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    # Columns are scaled to unit RMS first, so the ridge weighs every input alike whatever
    # its magnitude (CP factors, for one, come out with arbitrary per-channel scales).
    scale = np.sqrt(np.mean(a**2, axis=0))
    scale[scale == 0] = 1.0
    a = a / scale
    gram = a.T @ a
    lam = ridge * float(np.mean(np.diag(gram))) if gram.size else 0.0
    gram[np.diag_indices_from(gram)] += lam
    pull = 0.0 if prior is None else lam * (prior.astype(np.float64) * scale[:, None])
    w = np.linalg.solve(gram, a.T @ y + pull)
    if bounds is not None:
        lo, hi = bounds
        below, above = y <= lo, y >= hi
        for _ in range(ACT_ITERATIONS):
            prediction = a @ w
            target = np.where(below, np.minimum(prediction, lo), y)
            target = np.where(above, np.maximum(prediction, hi), target)
            w = np.linalg.solve(gram, a.T @ target + pull)
    return w / scale[:, None]


def clamp_after(node: ir.Node) -> tuple[float, float] | None:
    """(lo, hi) of the ReLU / Clip that is the only consumer of ``node``'s output, or None."""
    out = node.outputs[0]
    uses = list(out.uses())
    if out.is_graph_output() or len(uses) != 1:
        return None
    user = uses[0][0]
    if user.op_type == "Relu":
        return 0.0, np.inf
    if user.op_type != "Clip":
        return None
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        if len(user.inputs) <= index or user.inputs[index] is None:
            bounds.append(default)
            continue
        const = user.inputs[index].const_value
        if const is None or const.size != 1:
            return None
        bounds.append(float(const.numpy().reshape(())))
    return bounds[0], bounds[1]


RIDGE_GRID = (1e-4, 1e-2, 1.0, 1e2)


def _validated_ridge(a, y, with_bias: bool, bounds, prior: np.ndarray) -> float | None:
    """The ridge strength for this fit, or None to keep ``prior`` (see the module docstring).

    With at least two rows per unknown the problem is well posed and ``RIDGE`` is used. With
    fewer, the strength of ``RIDGE_GRID`` whose fit on the even rows does best on the odd rows
    is chosen, or None when none beats ``prior`` there.
    """
    if a.shape[0] >= 2 * (a.shape[1] + with_bias):
        return RIDGE
    if a.shape[0] < 4:
        return None
    held, target = a[1::2].astype(np.float64), y[1::2].astype(np.float64)
    if with_bias:
        held = np.concatenate([held, np.ones((held.shape[0], 1))], axis=1)
    if bounds is not None:
        target = np.clip(target, *bounds)

    def error(w) -> float:
        prediction = held @ w
        if bounds is not None:
            prediction = np.clip(prediction, *bounds)
        return float(np.sum((prediction - target) ** 2))

    best, best_error = None, error(prior)
    for ridge in RIDGE_GRID:
        fit = ridge_solve(a[0::2], y[0::2], with_bias, bounds=bounds, prior=prior, ridge=ridge)
        trial = error(fit)
        if trial < best_error:
            best, best_error = ridge, trial
    return best


def _refit_conv(node: ir.Node, x: np.ndarray, y: np.ndarray, bounds) -> bool:
    if node.attributes.get_int("group", 1) != 1:
        return False
    patches, (n, i, j) = conv_patches(x, node)
    target = y[n, :, i, j]  # (P, C_out)
    weight_value = node.inputs[1]
    shape = weight_value.const_value.shape.numpy()
    dtype = weight_value.const_value.numpy().dtype
    current = weight_value.const_value.numpy().reshape(shape[0], -1).T
    prior = np.concatenate([current, _bias(node, shape[0])[None, :]], axis=0)
    ridge = _validated_ridge(patches, target, True, bounds, prior)
    if ridge is None:
        return False
    solution = ridge_solve(patches, target, bounds=bounds, prior=prior, ridge=ridge)
    weight_value.const_value = ir.tensor(
        np.ascontiguousarray(solution[:-1].T.reshape(shape).astype(dtype)), name=weight_value.name
    )
    _set_bias(node, solution[-1].astype(dtype))
    return True


def _refit_dense(node: ir.Node, x: np.ndarray, y: np.ndarray, bounds) -> bool:
    has_bias = node.op_type == "Gemm"
    weight_value = node.inputs[1]
    dtype = weight_value.const_value.numpy().dtype
    current = weight_value.const_value.numpy().astype(np.float64)
    if node.op_type == "Gemm":
        alpha = node.attributes.get_float("alpha", 1.0)
        current = (current.T if node.attributes.get_int("transB", 0) else current) * alpha
        bias_value = node.inputs[2] if len(node.inputs) > 2 else None
        if bias_value is not None and bias_value.const_value is not None:
            if bias_value.const_value.size != current.shape[1]:
                return False  # a scalar or per-row C is no per-output bias: left as it is
        bias = _bias(node, current.shape[1]) * node.attributes.get_float("beta", 1.0)
        prior = np.concatenate([current, bias[None, :]], axis=0)
        rows_in, rows_out = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    else:  # MatMul: every leading position of [..., C] is a sample of the same map
        prior = current
        rows_in, rows_out = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    ridge = _validated_ridge(rows_in, rows_out, has_bias, bounds, prior)
    if ridge is None:
        return False
    solution = ridge_solve(rows_in, rows_out, has_bias, bounds=bounds, prior=prior, ridge=ridge)
    matrix = solution[:-1] if has_bias else solution  # (F_in, F_out)
    if node.op_type == "Gemm":
        alpha = node.attributes.get_float("alpha", 1.0)
        stored = matrix.T if node.attributes.get_int("transB", 0) else matrix
        weight_value.const_value = ir.tensor(
            np.ascontiguousarray((stored / alpha).astype(dtype)), name=weight_value.name
        )
        beta = node.attributes.get_float("beta", 1.0)
        _set_bias(node, (solution[-1] / beta).astype(dtype))
    else:
        weight_value.const_value = ir.tensor(
            np.ascontiguousarray(matrix.astype(dtype)), name=weight_value.name
        )
    return True


def _bias(node: ir.Node, outputs: int) -> np.ndarray:
    """The node's bias as float64 (zeros when it has none)."""
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = node.inputs[2].const_value.numpy().astype(np.float64).reshape(-1)
        return np.broadcast_to(bias, (outputs,))  # C as (N,), (1, N) or a scalar
    return np.zeros(outputs)


def _set_bias(node: ir.Node, bias: np.ndarray) -> None:
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        value = node.inputs[2]
        old = value.const_value.numpy()
        value.const_value = ir.tensor(bias.reshape(old.shape).astype(old.dtype), name=value.name)
        return
    value = add_initializer(node.graph, f"{node.name or node.op_type.lower()}_refit_bias", bias)
    node.resize_inputs(3)
    node.replace_input_with(2, value)


def refit_layers(
    original: ir.Model,
    current: ir.Model,
    pairs: Sequence[tuple[ir.Node, ir.Node]],
    batches: Sequence[Mapping[str, np.ndarray]],
    kept_outputs: Mapping[ir.Node, np.ndarray] | None = None,
    through_act: bool = False,
) -> dict[ir.Node, str]:
    """Refit Conv / Gemm / MatMul layers of ``current`` to ``original``'s outputs.

    ``pairs`` holds each layer of ``current`` with its counterpart in ``original``, whose
    output it is fit to. ``kept_outputs`` maps a layer whose own outputs were pruned to the
    original output channels it still has. With ``through_act``, a layer followed only by a
    ReLU / Clip is fit through it. Returns the refit layers, each with "linear" or the
    activation it was fit through; a layer whose refit would not generalize (see the module
    docstring) is left as it is and absent.
    """
    position = {node: i for i, node in enumerate(current.graph)}
    pairs = sorted(pairs, key=lambda pair: position[pair[0]])
    done = {}
    targets: dict[str, np.ndarray] = {}
    chunks = _target_chunks(pairs, sum(len(next(iter(b.values()))) for b in batches))
    walk = _Walk(current, batches)
    for node, twin in progress.bar(pairs, desc="refit"):
        if twin.outputs[0].name not in targets:  # the next chunk of targets, in order
            targets = capture(original, [t.outputs[0].name for _, t in next(chunks)], batches)
        x = walk.input_of(node)
        y = targets[twin.outputs[0].name]
        if kept_outputs and node in kept_outputs:
            y = y[:, kept_outputs[node]]
        bounds = clamp_after(node) if through_act else None
        if node.op_type == "Conv":
            refit = _refit_conv(node, x, y, bounds)
        elif node.op_type in ("Gemm", "MatMul"):
            refit = _refit_dense(node, x, y, bounds)
        else:
            continue
        if not refit:
            logger.info(
                "kept %s %s: a refit on %d samples would not generalize",
                node.op_type,
                node.name,
                x.shape[0],
            )
            continue
        done[node] = "linear" if bounds is None else f"through clip{bounds}"
        logger.info(
            "refit %s %s on %d samples (%s)", node.op_type, node.name, x.shape[0], done[node]
        )
    return done


class _Walk:
    """Layer inputs of a model being refit in topological order, one graph segment at a time.

    A refit changes only its layer's weights, so the values computed before that layer stay
    valid: the walk keeps those that cross the layer's position (its *frontier*) and gets the
    next layer's input by running only the nodes between the two layers, fed with them. One
    refit then costs about one run of the model over the samples instead of one per layer
    (PP-OCRv6's small recognizer, 39 layers on 64 samples: 4553 runs, 46 of a candidate's 60
    s). A frontier over ``FRONTIER_BYTES`` (early ResNet-50 blocks on 32 samples), a model
    with subgraphs (If, Loop: values they read are not node inputs) or a segment onnxruntime
    refuses fall back to capturing the input from a whole run.
    """

    def __init__(self, model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.model, self.batches = model, batches
        self.counts = [len(next(iter(b.values()))) for b in batches]
        self.enabled = bool(batches) and not has_subgraphs(model)
        self.cut: int | None = None
        self.values: dict[str, np.ndarray] = {}
        self.shapes: dict | None = None
        self.dtypes: dict = {}

    def input_of(self, node: ir.Node) -> np.ndarray:
        """``node``'s first input on every sample, in the model as it is now."""
        name = node.inputs[0].name
        if self.enabled:
            try:
                values = self._advance(list(self.model.graph).index(node))
            except Exception as exc:  # noqa: BLE001 - a segment onnxruntime refuses
                logger.warning("refit: a graph segment did not run (%s); running whole", exc)
                self.enabled, values = False, None
            if values is not None:
                return values[name]
        self.cut, self.values = None, {}
        return capture(self.model, [name], self.batches)[name]

    def _bytes(self, names: list[str]) -> float:
        """What the values ``names`` hold on every sample (inf where a shape is unknown)."""
        if self.shapes is None:
            # Concrete shapes for the first batch: a dynamic width is a dim of 1 to the
            # value's own shape (value_bytes), and the frontier would be priced far too low.
            sample = {k: v.shape for k, v in self.batches[0].items()}
            self.shapes = inferred_shapes(self.model, sample)
            self.dtypes = {v.name: v.dtype for n in self.model.graph for v in n.outputs}
            self.dtypes.update({v.name: v.dtype for v in self.model.graph.inputs})
        rows = self.counts[0]
        total = 0.0
        for name in names:
            shape = self.shapes.get(name)
            if not shape or any(not isinstance(d, int) or d < 0 for d in shape):
                return math.inf
            if shape[0] != rows:
                # Not a value per sample along axis 0 (a shape computed from the input, a
                # sequence laid out time-first): the frontier could not be cut by batch.
                return math.inf
            dtype = self.dtypes.get(name)
            itemsize = dtype.itemsize if dtype is not None else 4
            total += math.prod(shape) * itemsize
        return total * sum(self.counts) / rows

    def _advance(self, cut: int) -> dict[str, np.ndarray] | None:
        names = crossing(self.model, cut)
        if self._bytes(names) > FRONTIER_BYTES:
            self.cut, self.values = None, {}
            return None
        if self.cut is None or self.cut > cut:
            values = capture(self.model, names, self.batches)
        else:
            fresh = [n for n in names if n not in self.values]
            values = {n: self.values[n] for n in names if n in self.values}
            if fresh:
                values.update(self._segment(list(self.values), fresh))
        self.cut, self.values = cut, values
        return values

    def _segment(self, inputs: list[str], outputs: list[str]) -> dict[str, np.ndarray]:
        """``outputs`` computed from the frontier's values ``inputs``, batch by batch."""
        segment = cut_graph(clone_model(self.model), inputs, outputs)
        if segment is None:
            raise ValueError(f"no segment from {inputs} to {outputs}")
        fed = [v.name for v in segment.graph.inputs]
        run = OrtModel(segment)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        start = 0
        for count in self.counts:
            got = run.run({n: self.values[n][start : start + count] for n in fed})
            for name in outputs:
                parts[name].append(got[name])
            start += count
        return {name: np.concatenate(parts.pop(name)) for name in outputs}


def _target_chunks(pairs, samples: int):
    """``pairs`` in consecutive chunks whose targets hold at most ``TARGET_BYTES`` at once.

    Each chunk costs one run of the original model; a chunk holds one layer at least.
    """
    chunk, held = [], 0
    for pair in pairs:
        size = samples * value_bytes(pair[1].outputs[0])
        if chunk and held + size > TARGET_BYTES:
            yield chunk
            chunk, held = [], 0
        chunk.append(pair)
        held += size
    if chunk:
        yield chunk


def layer_rows(
    node: ir.Node, x: np.ndarray, limit: int | None = None
) -> tuple[np.ndarray, int, int]:
    """The rows ``node`` multiplies by its weight, the columns per channel, the rows available.

    The last is how many rows there were before ``limit`` (a seeded sample) was taken. A
    Conv's rows are im2col patches (``kh * kw`` columns per channel, at most ``MAX_ROWS``
    positions); a Gemm's or a rank-2 MatMul's are its input rows (one column per feature).
    """
    if node.op_type == "Conv":
        kh, kw = node.inputs[1].const_value.shape.numpy()[2:]
        out_h, out_w = conv_out_size(x.shape, node)
        available = min(x.shape[0] * out_h * out_w, MAX_ROWS)
        return conv_patches(x, node, limit=limit)[0], int(kh * kw), available
    rows = x.reshape(-1, x.shape[-1])
    available = len(rows)
    if limit is not None and available > limit:
        rows = rows[np.random.default_rng(0).choice(available, limit, replace=False)]
    return rows, 1, available


def layer_matrix(node: ir.Node) -> np.ndarray:
    """The weight as the (inputs, outputs) matrix that multiplies :func:`layer_rows`."""
    weight = node.inputs[1].const_value.numpy().astype(np.float64)
    if node.op_type == "Conv":
        return weight.reshape(weight.shape[0], -1).T
    if node.op_type == "Gemm":
        alpha = node.attributes.get_float("alpha", 1.0)
        return (weight.T if node.attributes.get_int("transB", 0) else weight) * alpha
    return weight


SELECTION_ROWS = 8192
MOMENT_BLOCK = 32 << 20  # bytes of float64 rows summed at once
UPDATE_ROWS = 512  # rows of the inverse updated at once when a block is removed


@dataclass
class Moments:
    """First and second moments of a layer's rows (:func:`layer_rows`).

    They are all it takes to cost removals. ``posed``: whether the refit has two rows per
    unknown (see ``_validated_ridge``).
    """

    mean: np.ndarray
    second: np.ndarray
    posed: bool

    @classmethod
    def of(cls, rows: np.ndarray, available: int | None = None) -> Moments:
        """Moments of ``rows``, on at most ``SELECTION_ROWS`` of them (seeded sample).

        ``available``: the rows there were before the caller sampled these (:func:`layer_rows`
        with ``limit=SELECTION_ROWS``), which says whether the refit is well posed. The sums
        run in float64 a block of rows at a time, not on a float64 copy of them all.
        """
        available = rows.shape[0] if available is None else available
        posed = available >= 2 * (rows.shape[1] + 1)
        if rows.shape[0] > SELECTION_ROWS:
            rows = rows[np.random.default_rng(0).choice(rows.shape[0], SELECTION_ROWS, False)]
        columns = rows.shape[1]
        total, second = np.zeros(columns), np.zeros((columns, columns))
        step = max(1, MOMENT_BLOCK // (8 * columns))
        for start in range(0, rows.shape[0], step):
            block = rows[start : start + step].astype(np.float64)
            total += block.sum(axis=0)
            second += block.T @ block
        count = max(rows.shape[0], 1)
        return cls(total / count, second / count, posed)


class RemovalCost:
    """Output error of one layer as groups of its input columns are removed one by one.

    ``blocks[k]`` are the columns of candidate ``k`` (a channel: ``kh * kw`` patch columns of
    a Conv, one feature of a Gemm, a Flatten block). Errors are mean squared output errors
    relative to the output's variance, so layers of different scale can be added up.

    With ``refit`` the layer is refit after the removal (``prune{refit=true}``), and the
    cost of removing block G is the optimal-brain-surgeon one, the least the refit residual can
    grow: ``tr(W_G^T [(H^-1)_GG]^-1 W_G)`` with ``H`` the Gram matrix of the rows (bias column
    included). Removing G updates ``H^-1`` and the weights as the refit would, so the next
    choice sees the layer as it will be (Hassibi and Stork 1993; structured, as Kuznedelev et
    al. 2023 do for channels). The refit only follows the model when the fit is well posed, so
    with fewer than two rows per unknown (``_validated_ridge``) the cost is the one without
    refit.

    Without refit the removed columns' mean contribution is folded into the bias
    (compensation), so the cost of a removed set S is the variance of what it contributed,
    ``tr(W_S^T C_SS W_S)`` with ``C`` the covariance of the rows, grown greedily (ThiNet's
    selection, Luo et al. 2017). Correlated channels cost less together than apart.

    The moments are consumed: their second moment becomes the inverse's (or the
    covariance's) workspace, so a 4608-column layer holds one 170 MB matrix, not three.
    """

    def __init__(
        self, moments: Moments, weight: np.ndarray, blocks: dict[int, np.ndarray], refit: bool
    ) -> None:
        mean, second = moments.mean, moments.second
        # tr(W^T C W) with C = E[xx^T] - mean mean^T, without an n x n C (BLAS, not einsum)
        projected = mean @ weight
        energy = float(np.sum(weight * (second @ weight)) - projected @ projected)
        self.energy = energy or 1.0
        self.blocks = blocks
        self.refit = refit and moments.posed
        if self.refit:
            # H = [[S + r I, m], [m^T, 1 + r]] (rows with a bias column, ridge r). Only the
            # rows' block of H^-1 enters the costs and the weight updates, and it is the
            # inverse of the Schur complement S + r I - m m^T / (1 + r): built in ``second``
            # itself (the moments are handed over), no (n+1) x (n+1) copy of it is made.
            n = len(mean)
            ridge = RIDGE * (float(np.trace(second)) + 1.0) / (n + 1)
            schur = second
            for start in range(0, n, UPDATE_ROWS):  # no n x n temporary for the outer product
                rows = slice(start, start + UPDATE_ROWS)
                schur[rows] -= np.outer(mean[rows] / (1.0 + ridge), mean)
            schur[np.diag_indices(n)] += ridge
            moments.second = None  # consumed
            self.inverse = np.linalg.inv(schur)
            del schur, second
            self.weight = weight.copy()
        else:
            for start in range(0, len(mean), UPDATE_ROWS):  # C = S - m m^T, in place
                rows = slice(start, start + UPDATE_ROWS)
                second[rows] -= np.outer(mean[rows], mean)
            moments.second = None  # consumed
            self.covariance, self.weight = second, weight
            self.removed_sum = np.zeros_like(weight)  # C[:, S] W_S

    def costs(self, candidates: Sequence[int]) -> np.ndarray:
        """The relative error added by removing each candidate next."""
        sizes = {len(self.blocks[k]) for k in candidates}
        if len(sizes) > 1:  # ragged blocks: one at a time
            return np.concatenate([self.costs([k]) for k in candidates])
        index = np.stack([self.blocks[k] for k in candidates])  # (m, b)
        w = self.weight[index]  # (m, b, O)
        square = index[:, :, None], index[:, None, :]
        if self.refit:
            block = self.inverse[square]
            if index.shape[1] == 1:
                # Single columns: the solve is a division. np.linalg.solve on a stack of 1x1
                # blocks cost 1.4 ms a call, 8.8 of the 38 s PP-OCRv6's small recognizer's
                # compress space took to build (6270 calls).
                result = np.einsum("mo,mo->m", w[:, 0], w[:, 0]) / block[:, 0, 0]
            else:
                solved = np.linalg.solve(block, w)
                result = np.einsum("mbo,mbo->m", w, solved)
        else:
            own = np.einsum("mbo,mbo->m", w, self.covariance[square] @ w)
            result = own + 2 * np.einsum("mbo,mbo->m", w, self.removed_sum[index])
        return result / self.energy

    def remove(self, k: int) -> None:
        """Remove candidate ``k``, updating the layer as the refit (or compensation) would."""
        g = self.blocks[k]
        if self.refit:
            columns = self.inverse[:, g]
            solve = np.linalg.inv(self.inverse[np.ix_(g, g)])
            self.weight -= columns @ (solve @ self.weight[g])
            scaled = columns @ solve
            for start in range(0, len(scaled), UPDATE_ROWS):  # no n x n temporary
                self.inverse[start : start + UPDATE_ROWS] -= (
                    scaled[start : start + UPDATE_ROWS] @ columns.T
                )
            self.weight[g] = 0.0
        else:
            self.removed_sum += self.covariance[:, g] @ self.weight[g]


def removal_order(layers: Sequence[RemovalCost], size: int, limit: int | None) -> np.ndarray:
    """Scores of ``size`` candidates from greedy removal, lowest first to go.

    Each step removes the candidate whose removal adds the least error summed over
    ``layers``. A candidate's score is the error accumulated when it went; after ``limit``
    removals (all but one when None) the rest score that total plus their cost as the next.
    """
    remaining = list(range(size))
    scores = np.zeros(size)
    total = 0.0
    steps = size - 1 if limit is None else min(limit, size - 1)

    def added() -> np.ndarray:
        result = np.zeros(len(remaining))
        position = {k: p for p, k in enumerate(remaining)}
        for layer in layers:
            present = [k for k in remaining if k in layer.blocks]
            if present:
                result[[position[k] for k in present]] += layer.costs(present)
        return result

    for _ in range(steps):
        costs = added()
        pick = int(np.argmin(costs))
        total += max(float(costs[pick]), 0.0)
        chosen = remaining.pop(pick)
        scores[chosen] = total
        for layer in layers:
            if chosen in layer.blocks:
                layer.remove(chosen)
    scores[remaining] = total + np.maximum(added(), 0.0) + 1e-12
    return scores
