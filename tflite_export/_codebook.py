"""Keeping a DGMS codebook through int8 export.

A hardened DGMS layer stores ``codebook[indices]``: at most K distinct values.
Standard int8 export loses that: per-channel scales map the K values to many
codes, and BatchNorm folding multiplies each output channel by its own factor
before quantization. Here instead:

1. `snap_codebooks` rounds each codebook onto a symmetric int8 grid
   (``g = max|c| / 127``, ``c' = round(c / g) g``), so every shared value is an
   integer code ``q`` times ``g``.
2. After conversion, each layer's kernel is found among the model's weight
   tensors by its index pattern (transposed to TFLite's layout) and solved for
   one factor per output channel (1 without BatchNorm, ``gamma / sqrt(var +
   eps)`` with it): ``T[c] = s[c] * c'[idx[c]]`` exactly.
3. The dynamic-range model's int8 weights for that tensor are rewritten as
   ``sign(s[c]) * q[idx]`` with scale ``|s[c]| g`` per channel: the same K codes
   in every channel (2K - 1 at most where a folded factor is negative), and the
   dequantized weight equals the float kernel up to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from jgraph.core import ConfigError
from jgraph.quant import Hardened
from tflite_export._flatbuffer import _decode, load_model_t, pack_model_t, tensor_array

__all__ = ["CodebookLayer", "LayerMatch", "match_layers", "preserve_codebooks", "snap_codebooks"]

INT8_MAX = 127


def _grid(book: np.ndarray) -> tuple[float, np.ndarray]:
    """(g, q): the int8 step of a codebook and its integer codes."""
    peak = float(np.max(np.abs(book))) if book.size else 0.0
    g = peak / INT8_MAX if peak > 0 else 1.0
    return g, np.rint(book / g).astype(np.int32)


def _kernel_holder(tree: Any, name: str) -> Any:
    node = tree
    for part in name.split("/"):
        if isinstance(node, Mapping):
            key: Any = part if part in node else int(part) if part.isdigit() else part
            node = node[key]
        else:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def snap_codebooks(hardened: Hardened) -> Hardened:
    """Rounds every codebook to a symmetric per-tensor int8 grid and updates the kernels.

    Args:
        hardened: from `jgraph.quant.harden` / `harden_nnx`.

    Returns:
        A new `Hardened`: codebooks ``round(c / g) * g`` with ``g = max|c| / 127``
        (entry 0 stays 0), the same indices, and variables whose kernels are
        ``codebook[indices]`` with the snapped codebook.

    Example:
        >>> import numpy as np
        >>> from jgraph.quant import Hardened
        >>> h = Hardened({"params": {"d": {"kernel": np.array([[0.0, 0.3], [1.0, 0.3]])}}},
        ...              {"d": np.array([0.0, 0.3, 1.0], np.float32)},
        ...              {"d": np.array([[0, 1], [2, 1]], np.uint8)})
        >>> snapped = snap_codebooks(h)
        >>> (snapped.codebooks["d"] * 127).round(3).tolist()
        [0.0, 38.0, 127.0]
    """
    import copy

    variables = copy.deepcopy(hardened.variables)
    books: dict[str, np.ndarray] = {}
    for name, book in hardened.codebooks.items():
        g, q = _grid(np.asarray(book, np.float64))
        snapped = (q * g).astype(np.float32)
        books[name] = snapped
        holder = _kernel_holder(variables["params"], name)
        kernel = holder["kernel"]
        holder["kernel"] = np.asarray(
            snapped[hardened.indices[name]], dtype=np.asarray(kernel).dtype
        )
    return Hardened(variables, books, dict(hardened.indices))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerMatch:
    """Where a DGMS layer's kernel ended up in a converted model.

    Attributes:
        tensor: index of the tensor in the first subgraph.
        name: the tensor's name.
        indices: the layer's codebook indices in the tensor's layout.
        axis: an axis along which the tensor is ``factor * codebook[indices]``
            (the output channels when BatchNorm was folded; any axis without it).
        values: the tensor's float values.
    """

    tensor: int
    name: str
    indices: np.ndarray
    axis: int
    values: np.ndarray


def _squeezed_perms(idx: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """``idx`` rearranged to ``shape`` by an axis permutation (size-1 axes ignored)."""
    src = [d for d in idx.shape if d != 1]
    dst = [d for d in shape if d != 1]
    if sorted(src) != sorted(dst) or idx.size != int(np.prod(shape)):
        return []
    flat = idx.reshape(src)
    out = []
    for perm in itertools.permutations(range(len(src))):
        if [src[p] for p in perm] == dst:
            out.append(np.transpose(flat, perm).reshape(shape))
    return out


def _solve(values: np.ndarray, expected: np.ndarray, axis: int) -> np.ndarray | None:
    """Per-channel factors s with ``values == s * expected`` along ``axis``, or None."""
    other = tuple(a for a in range(values.ndim) if a != axis)
    v = values.astype(np.float64)
    e = expected.astype(np.float64)
    den = np.sum(e * e, axis=other, keepdims=True)
    s = np.where(den > 0, np.sum(v * e, axis=other, keepdims=True) / np.where(den > 0, den, 1), 0)
    scale = max(float(np.max(np.abs(v))), 1e-30)
    # float32 products: the converter multiplied in float32 when it folded.
    if np.max(np.abs(v - s * e)) > 1e-5 * scale:
        return None
    return np.squeeze(s, axis=other)


def _match_one(arr: np.ndarray, idx: np.ndarray, book: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(indices in ``arr``'s layout, axis) when ``arr`` is a per-channel multiple of ``book[idx]``."""
    for placed in _squeezed_perms(idx, arr.shape):
        expected = book[placed]
        # Channel axes are first (conv, dense) or last (depthwise): try those first.
        for axis in sorted(range(arr.ndim), key=lambda a: (a not in (0, arr.ndim - 1), a)):
            if _solve(arr, expected, axis) is not None:
                return placed, axis
    return None


def match_layers(model: Any, hardened: Hardened) -> dict[str, LayerMatch]:
    """Finds each hardened layer's kernel in a float .tflite model.

    Args:
        model: a ``float`` export of the model built from ``hardened``, as a
            ``ModelT`` (`load_model_t`).
        hardened: its codebooks and indices.

    Returns:
        Layer name -> `LayerMatch` for every layer found; a layer is missing
        when no float tensor equals ``factor * codebook[indices]`` per channel.
    """
    tensors = model.subgraphs[0].tensors
    candidates = {}
    for i, t in enumerate(tensors):
        arr = tensor_array(model, t)
        if arr is not None and arr.ndim >= 2 and arr.dtype == np.float32:
            candidates[i] = arr
    found: dict[str, LayerMatch] = {}
    for name, idx in hardened.indices.items():
        book = np.asarray(hardened.codebooks[name], np.float64)
        for i, arr in candidates.items():
            hit = _match_one(arr, np.asarray(idx), book)
            if hit is not None:
                placed, axis = hit
                found[name] = LayerMatch(
                    tensor=i, name=_decode(tensors[i].name), indices=placed, axis=axis, values=arr
                )
                del candidates[i]  # one tensor holds one layer
                break
    return found


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodebookLayer:
    """How one DGMS layer was stored.

    Attributes:
        layer: the layer name (as in `Hardened`).
        k: codebook entries.
        tensor: the .tflite tensor holding it ("" if not found).
        stored: the tensor's stored type (``FLOAT32`` / ``INT8``).
        distinct: distinct stored values in the tensor.
        distinct_per_channel: the most distinct values in one output channel.
        preserved: at most K distinct values per channel, and per tensor
            unless a folded factor was negative.
        note: why not, when not.
    """

    layer: str
    k: int
    tensor: str
    stored: str
    distinct: int
    distinct_per_channel: int
    preserved: bool
    note: str = ""


def _per_channel_distinct(values: np.ndarray, axis: int) -> int:
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    return max((np.unique(row).size for row in moved), default=0)


def describe_float(
    float_model: bytes, hardened: Hardened, quantized_model: bytes | None = None
) -> list[CodebookLayer]:
    """Each layer as stored: distinct values per tensor and per channel.

    Args:
        float_model: the float export (where the layers are found).
        hardened: the codebooks and indices.
        quantized_model: an int8 export of the same model (the baselines):
            report its tensor for each layer instead of the float one.
    """
    qmodel = load_model_t(quantized_model) if quantized_model is not None else None
    matches = match_layers(load_model_t(float_model), hardened)
    out = []
    for name, book in hardened.codebooks.items():
        k = int(np.asarray(book).size)
        m = matches.get(name)
        if m is None:
            out.append(
                CodebookLayer(
                    layer=name,
                    k=k,
                    tensor="",
                    stored="",
                    distinct=0,
                    distinct_per_channel=0,
                    preserved=False,
                    note="kernel not found in the model",
                )
            )
            continue
        arr: np.ndarray | None = m.values
        stored = "FLOAT32"
        if qmodel is not None:
            j = _find_quantized(qmodel, qmodel.subgraphs[0].tensors, m.values)
            if j is not None:
                arr = tensor_array(qmodel, qmodel.subgraphs[0].tensors[j])
                stored = "INT8"
        assert arr is not None
        per = _per_channel_distinct(arr, m.axis)
        distinct = int(np.unique(arr).size)
        out.append(
            CodebookLayer(
                layer=name,
                k=k,
                tensor=m.name,
                stored=stored,
                distinct=distinct,
                distinct_per_channel=per,
                preserved=per <= k and (stored == "FLOAT32" or distinct <= k),
            )
        )
    return out


def preserve_codebooks(
    float_model: bytes, quantized_model: bytes, snapped: Hardened
) -> tuple[bytes, list[CodebookLayer]]:
    """Rewrites a dynamic-range model's int8 weights as the snapped codebook's codes.

    Args:
        float_model: the ``float`` export of the snapped model.
        quantized_model: its dynamic-range (int8 weight) export.
        snapped: from `snap_codebooks`.

    Returns:
        ``(bytes, layers)``: the rewritten model and one `CodebookLayer` per layer.

    Raises:
        ConfigError: a layer's kernel is not in the float model: the function
            was not built from ``snap_codebooks(hardened)``'s variables.
    """
    matches = match_layers(load_model_t(float_model), snapped)
    missing = sorted(set(snapped.indices) - set(matches))
    if missing:
        raise ConfigError(
            "hardened",
            missing,
            "layers whose snapped-codebook kernel is not in the converted model",
            "build the exported function from tflite_export.snap_codebooks(hardened).variables "
            "(a Linen module or an NNX model with hardened= does this for you)",
        )
    qmodel = load_model_t(quantized_model)
    qtensors = qmodel.subgraphs[0].tensors
    layers: list[CodebookLayer] = []
    for name, m in matches.items():
        k = int(np.asarray(snapped.codebooks[name]).size)
        g, q = _grid(np.asarray(snapped.codebooks[name], np.float64))
        target = m.values
        j = _find_quantized(qmodel, qtensors, target)
        if j is None:
            note = "left float by the converter (too small to quantize)"
            layers.append(_as_stored(name, k, m, target, "FLOAT32", note))
            continue
        t = qtensors[j]
        qp = t.quantization
        per_channel = len(qp.scale) > 1
        axis = int(qp.quantizedDimension) if per_channel else m.axis
        # Solve along the quantizer's channel axis (the match may have picked another axis
        # when the factors are uniform, e.g. a layer without BatchNorm).
        solved = _solve(target, np.asarray(snapped.codebooks[name], np.float64)[m.indices], axis)
        if solved is None:
            layers.append(
                _unchanged(qmodel, t, name, k, m, "folded factors vary along another axis")
            )
            continue
        factors = np.atleast_1d(np.asarray(solved, np.float64))
        if not per_channel:
            mags = np.abs(factors[factors != 0])
            if mags.size and np.ptp(mags) > 1e-6 * mags.max():
                layers.append(
                    _unchanged(
                        qmodel, t, name, k, m, "per-tensor scale but per-channel folded factors"
                    )
                )
                continue
        sign = np.where(factors < 0, -1, 1)
        mag = np.where(factors != 0, np.abs(factors), 1.0)
        shape = [1] * target.ndim
        shape[axis] = -1
        codes = (sign.reshape(shape) * q[m.indices]).astype(np.int8)
        codes = np.where(factors.reshape(shape) == 0, 0, codes).astype(np.int8)
        scales = (
            (mag * g).astype(np.float32)
            if per_channel
            else np.asarray([mag.flat[0] * g], np.float32)
        )
        qmodel.buffers[t.buffer].data = np.frombuffer(codes.tobytes(), np.uint8).copy()
        qp.scale = scales.tolist()
        qp.zeroPoint = [0] * len(scales)
        distinct = int(np.unique(codes).size)
        layers.append(
            CodebookLayer(
                layer=name,
                k=k,
                tensor=m.name,
                stored="INT8",
                distinct=distinct,
                # Every channel holds +-q[idx]: at most K codes by construction.
                distinct_per_channel=_per_channel_distinct(codes, axis),
                preserved=True,
                note="" if distinct <= k else "negative folded factors flip codes",
            )
        )
    return pack_model_t(qmodel), layers


def _unchanged(model: Any, t: Any, name: str, k: int, m: LayerMatch, note: str) -> CodebookLayer:
    arr = tensor_array(model, t)
    assert arr is not None
    return _as_stored(name, k, m, arr, "INT8", note)


def _as_stored(
    name: str, k: int, m: LayerMatch, arr: np.ndarray, stored: str, note: str
) -> CodebookLayer:
    """A layer whose codebook did not survive: what the tensor holds, and why."""
    return CodebookLayer(
        layer=name,
        k=k,
        tensor=m.name,
        stored=stored,
        distinct=int(np.unique(arr).size),
        distinct_per_channel=_per_channel_distinct(arr, m.axis),
        preserved=False,
        note=note,
    )


def _find_quantized(model: Any, tensors: Any, target: np.ndarray) -> int | None:
    """The int8 tensor whose dequantized values are the float tensor's, within rounding."""
    for j, t in enumerate(tensors):
        q = t.quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            continue
        arr = tensor_array(model, t)
        if arr is None or arr.dtype != np.int8 or arr.shape != target.shape:
            continue
        scale = np.asarray(q.scale, np.float64)
        if scale.size > 1:
            shape = [1] * arr.ndim
            shape[int(q.quantizedDimension)] = -1
            scale = scale.reshape(shape)
        err = np.abs(arr * scale - target)
        if np.all(err <= 0.5 * scale * (1 + 1e-3) + 1e-12):
            return j
    return None
