"""Atomic file writes: a crash mid-write never leaves a truncated file behind.

Each writer puts the bytes in a temporary file in the destination's directory,
flushes and fsyncs it, then `os.replace`s it over the destination (atomic on
POSIX when both are on one filesystem, which the same directory guarantees).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically, creating parent directories.

    Args:
        path: destination file.
        data: the full contents.

    Returns:
        The destination as a `Path`.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> atomic_write_bytes(d / "x.bin", b"abc").read_bytes()
        b'abc'
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Writes UTF-8 ``text`` to ``path`` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Serializes ``obj`` as JSON (sorted keys, trailing newline) and writes it atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")
