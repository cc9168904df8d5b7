"""Reading and writing the safetensors format, bfloat16 included.

`safetensors.numpy` cannot load BF16 tensors (numpy has no bfloat16), and Llama checkpoints
are BF16, so the reader parses the format itself (an 8-byte little-endian header length, a JSON
header of ``{name: {dtype, shape, data_offsets}}``, then the raw bytes) and maps BF16 to
``ml_dtypes.bfloat16``. Files are written atomically. Both directions are tested against the
`safetensors` package.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from jgraph.core import ConfigError, atomic_write_bytes

__all__ = ["read_safetensors", "write_safetensors"]

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Loads every tensor of a ``.safetensors`` file.

    Returns:
        (tensors by name, the ``__metadata__`` strings).

    Raises:
        ConfigError: the file is truncated or not safetensors.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ConfigError(str(path), len(raw), "is too short for safetensors", "re-export it")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(
            str(path), n, "has no valid safetensors header", "pass a .safetensors file"
        ) from None
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ConfigError(
                f"{path.name}:{name}", info["dtype"], "dtype not supported", "use F32/F16/BF16"
            )
        lo, hi = info["data_offsets"]
        dt = _DTYPES[info["dtype"]]
        shape = tuple(info["shape"])
        if not 0 <= lo <= hi <= len(data) or hi - lo != dt.itemsize * int(np.prod(shape)):
            raise ConfigError(
                f"{path.name}:{name}", (lo, hi),
                f"data offsets do not fit the file ({len(data)} data bytes) or the shape {shape}",
                "the file is truncated or corrupt: re-download or re-export it",
            )  # fmt: skip
        out[name] = np.frombuffer(data[lo:hi], dtype=dt).reshape(shape).copy()
    return out, dict(meta)


def write_safetensors(
    path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> Path:
    """Writes tensors (numpy or JAX arrays) to ``path`` atomically."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(np.asarray(tensors[name]))
        buf = arr.tobytes()
        header[name] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(buf)],
        }
        chunks.append(buf)
        offset += len(buf)
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # the format aligns the data start to 8 bytes
    return atomic_write_bytes(path, struct.pack("<Q", len(hbytes)) + hbytes + b"".join(chunks))
