"""Atomic file writes: a crash mid-write never leaves a truncated file behind.

Each writer puts the bytes in a temporary file in the destination's directory,
flushes and fsyncs it, then `os.replace`s it over the destination (atomic on
POSIX when both are on one filesystem, which the same directory guarantees).

The result has the permissions an ordinary ``open(path, "w")`` would give it: a
new file gets ``0o666`` less the umask (the kernel applies it, as for any
``open``), and a file that is replaced keeps its permission bits. (Its owner
and group become the writer's, as with any write-then-rename.)

A destination that cannot be written (a folder in its place, a file where a
parent folder should be, no permission) raises the matching `OSError` subclass
with a message that names the destination and what is in the way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def _fail(exc: OSError, dest: Path, problem: str | None = None) -> NoReturn:
    # OSError(errno, ...) builds the matching subclass (NotADirectoryError, PermissionError, ...).
    raise OSError(exc.errno, f"cannot write {dest}: {problem or exc.strerror}", str(dest)) from exc


def _make_parent(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next(
            (p for p in (dest.parent, *dest.parent.parents) if p.exists() and not p.is_dir()),
            dest.parent,
        )
        _fail(
            OSError(errno.ENOTDIR, exc.strerror),
            dest,
            f"{blocker} is a file, not a folder; write somewhere else or move that file",
        )
    except OSError as exc:
        _fail(exc, dest, f"cannot create the folder {dest.parent} ({exc.strerror})")


def _open_temp(dest: Path) -> tuple[int, str]:
    """Creates a new temp file next to ``dest`` with mode 0o666 (less the umask)."""
    for _ in range(100):
        tmp = str(dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            _fail(exc, dest)
    raise FileExistsError(errno.EEXIST, f"cannot write {dest}: no free temporary name", str(dest))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically, creating parent directories.

    A new file gets mode ``0o666 & ~umask``; an existing file keeps its mode.

    Args:
        path: destination file.
        data: the full contents.

    Returns:
        The destination as a `Path`.

    Raises:
        IsADirectoryError: ``path`` is a folder.
        NotADirectoryError: a parent of ``path`` is a file.
        OSError: any other failure (no permission, disk full), naming ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> atomic_write_bytes(d / "x.bin", b"abc").read_bytes()
        b'abc'
    """
    dest = Path(path)
    _make_parent(dest)
    old_mode: int | None = None
    try:
        st = os.stat(dest)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        _fail(exc, dest)
    else:
        if stat.S_ISDIR(st.st_mode):
            _fail(OSError(errno.EISDIR, "is a folder"), dest, "it is a folder; pass a file path")
        old_mode = stat.S_IMODE(st.st_mode)
    fd, tmp = _open_temp(dest)
    try:
        with os.fdopen(fd, "wb") as f:
            if old_mode is not None:
                os.fchmod(f.fileno(), old_mode)
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
