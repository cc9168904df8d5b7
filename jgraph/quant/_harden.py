"""From trained DGMS variables to deployable weights: codebooks, b-bit indices, sizes.

`harden` hard-assigns every quantized kernel (argmax responsibility) and returns
the hard weights (a plain variables dict the original model runs with), one
codebook of K = 2**b values per layer (index 0 is the pinned zero) and the
index arrays (uint8, values < K). `pack_indices` bit-packs an index array
densely (b bits per weight, LSB first), which is what the size accounting
counts and what a LUT-based runtime stores.

`compression_report` gives, per quantized layer and in total, the bits, the
sparsity s (share of weights assigned to the zero component), the paper's
CR = 32 / (b (1 - s)) (which treats zeros as free and ignores codebooks and
full-precision layers) and the honest packed size: ceil(n b / 8) index bytes +
4 K codebook bytes per quantized layer, plus 4 bytes per float32 value of every
other variable (biases, BatchNorm, the excluded first/last layers).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jgraph.core import ConfigError
from jgraph.quant._config import MIXTURE, DGMSConfig
from jgraph.quant._gmm import codebook, hard_indices
from jgraph.quant._transform import _get, _set, iter_mixtures

__all__ = [
    "CompressionReport",
    "Hardened",
    "LayerReport",
    "compression_report",
    "harden",
    "pack_indices",
    "unpack_indices",
]


class Hardened(NamedTuple):
    """The deployable form of a DGMS model.

    Attributes:
        variables: the model's variables with hard-quantized kernels and no
            mixture collection; ``model.apply(variables, x)`` runs it.
        codebooks: layer name (``"block1/Conv_0"``) -> float32 [K]; entry 0 is 0.
        indices: layer name -> uint8 array shaped like the kernel, values < K;
            ``codebooks[n][indices[n]]`` is the hard kernel exactly.
    """

    variables: dict[str, Any]
    codebooks: dict[str, np.ndarray]
    indices: dict[str, np.ndarray]


# One compilation per kernel shape instead of one per eager op and shape.
_hard_indices = jax.jit(hard_indices, static_argnames="sigma_min")


def _bits_of(k: int) -> int:
    return max(1, (k - 1).bit_length())


def harden(variables: Mapping[str, Any], config: DGMSConfig | None = None) -> Hardened:
    """Hard-quantizes every layer that has a mixture.

    Args:
        variables: from `DGMS.init` / training (``params`` and ``mixture``).
        config: only ``sigma_min`` is used (the σ floor applied in training);
            defaults to ``DGMSConfig()``.

    Returns:
        A `Hardened` (variables, codebooks, indices). Layers without a mixture
        are returned bit-for-bit unchanged.

    Raises:
        ConfigError: ``variables`` has no mixture collection.

    Example:
        >>> import jax.numpy as jnp
        >>> mix = {"mu": jnp.array([-1.0, 1.0, 2.0]), "sigma": jnp.full((4,), 0.3),
        ...        "pi": jnp.full((4,), 0.25), "tau": jnp.array(0.01)}
        >>> v = {"params": {"d": {"kernel": jnp.array([[0.1, 0.9], [2.2, -1.1]])}},
        ...      "mixture": {"d": mix}}
        >>> h = harden(v)
        >>> h.indices["d"].tolist(), h.codebooks["d"].tolist()
        ([[0, 2], [3, 1]], [0.0, -1.0, 1.0, 2.0])
    """
    if MIXTURE not in variables:
        raise ConfigError(
            "variables",
            sorted(variables),
            f"has no {MIXTURE!r} collection to harden",
            "pass the variables returned by DGMS.init / training",
        )
    sigma_min = (config or DGMSConfig()).sigma_min
    params = variables["params"]
    codebooks, indices = {}, {}
    for path, mix in iter_mixtures(variables[MIXTURE]):
        w = _get(params, (*path, "kernel"))
        idx = _hard_indices(w, mix, sigma_min=sigma_min)
        book = np.asarray(codebook(mix), np.float32)
        idx_np = np.asarray(idx).astype(np.uint8)
        name = "/".join(path)
        codebooks[name], indices[name] = book, idx_np
        hard = jax.numpy.asarray(book[idx_np], dtype=w.dtype)
        params = _set(params, (*path, "kernel"), hard)
    rest = {k: v for k, v in variables.items() if k not in (MIXTURE, "params")}
    return Hardened({**rest, "params": params}, codebooks, indices)


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """Bit-packs indices densely, ``bits`` per value, least significant bit first.

    Example:
        >>> import numpy as np
        >>> packed = pack_indices(np.array([1, 2, 3, 0, 1], np.uint8), 2)
        >>> packed.nbytes, unpack_indices(packed, 2, 5).tolist()
        (2, [1, 2, 3, 0, 1])
    """
    flat = np.asarray(indices, np.uint8).reshape(-1)
    if flat.size and int(flat.max()) >= 2**bits:
        raise ValueError(f"pack_indices: an index {int(flat.max())} does not fit in {bits} bits")
    bitplanes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)[None, :]) & 1  # [n, bits]
    return np.packbits(bitplanes.reshape(-1), bitorder="little")


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_indices`: the first ``count`` indices as uint8."""
    planes = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: count * bits]
    planes = planes.reshape(count, bits).astype(np.uint8)
    return (planes << np.arange(bits, dtype=np.uint8)[None, :]).sum(axis=1).astype(np.uint8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerReport:
    """Compression of one quantized layer."""

    name: str
    size: int
    bits: int
    distinct: int
    sparsity: float
    paper_cr: float
    packed_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressionReport:
    """Per-layer and total compression of a hardened model.

    Attributes:
        layers: one `LayerReport` per quantized layer.
        quantized_weights: weights in quantized layers.
        fp_values: every other float value (biases, BatchNorm, excluded layers),
            counted at its dtype's size.
        sparsity: share of quantized weights assigned to the zero component.
        paper_cr: 32 Σn / Σ b n (1 - s) over quantized layers (the paper's
            formula: zeros are free, no codebook, no full-precision layers).
        fp32_bytes: the model's size with every value in float32.
        packed_bytes: packed indices + codebooks + full-precision values.
        ratio: ``fp32_bytes / packed_bytes``, the honest whole-model ratio.
    """

    layers: tuple[LayerReport, ...]
    quantized_weights: int
    fp_values: int
    sparsity: float
    paper_cr: float
    fp32_bytes: int
    packed_bytes: int
    ratio: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in dataclasses.asdict(self).items() if k != "layers"},
            "layers": [layer.as_dict() for layer in self.layers],
        }


def _cr(bits: int, sparsity: float) -> float:
    return math.inf if sparsity >= 1.0 else 32.0 / (bits * (1.0 - sparsity))


def compression_report(hardened: Hardened) -> CompressionReport:
    """Sizes a `Hardened` model: per-layer bits, sparsity, paper CR and honest packed bytes.

    Example:
        >>> import jax.numpy as jnp
        >>> mix = {"mu": jnp.array([1.0]), "sigma": jnp.full((2,), 0.1),
        ...        "pi": jnp.full((2,), 0.5), "tau": jnp.array(0.01)}
        >>> v = {"params": {"d": {"kernel": jnp.array([[0.0] * 8, [1.0] * 8]),
        ...                       "bias": jnp.zeros(8)}}, "mixture": {"d": mix}}
        >>> r = compression_report(harden(v))
        >>> r.sparsity, r.paper_cr, r.packed_bytes  # 2 B indices + 8 B codebook + 32 B bias
        (0.5, 64.0, 42)
    """
    layers = []
    q_bits_kept = 0.0
    packed = 0
    quantized = 0
    for name, idx in hardened.indices.items():
        k = hardened.codebooks[name].size
        b = _bits_of(k)
        n = int(idx.size)
        s = float(np.mean(idx == 0)) if n else 0.0
        nbytes = math.ceil(n * b / 8) + 4 * k
        hard = hardened.codebooks[name][idx]
        layers.append(
            LayerReport(
                name=name,
                size=n,
                bits=b,
                distinct=int(np.unique(hard).size),
                sparsity=s,
                paper_cr=_cr(b, s),
                packed_bytes=nbytes,
            )
        )
        q_bits_kept += b * n * (1.0 - s)
        packed += nbytes
        quantized += n
    quantized_names = {tuple(name.split("/")) for name in hardened.indices}
    fp_values = 0
    fp_bytes = 0
    total_values = 0
    for coll, tree in hardened.variables.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = tuple(str(getattr(p, "key", p)) for p in path)
            size = int(np.size(leaf))
            total_values += size
            if coll == "params" and keys[-1] == "kernel" and keys[:-1] in quantized_names:
                continue
            fp_values += size
            fp_bytes += size * np.dtype(leaf.dtype).itemsize
    packed += fp_bytes
    fp32 = 4 * total_values
    sparsity = float(sum(r.sparsity * r.size for r in layers) / max(quantized, 1))
    paper = math.inf if q_bits_kept == 0 and quantized else 32.0 * quantized / max(q_bits_kept, 1)
    return CompressionReport(
        layers=tuple(layers),
        quantized_weights=quantized,
        fp_values=fp_values,
        sparsity=sparsity,
        paper_cr=paper,
        fp32_bytes=fp32,
        packed_bytes=packed,
        ratio=fp32 / max(packed, 1),
    )
