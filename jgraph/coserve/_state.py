"""The server's state directory: uploaded files, finetuning job records and versioned adapters.

Layout under the state directory::

    files/<file_id>.jsonl          the uploaded bytes
    files/<file_id>.json           its record (written after the bytes: a file without a
                                   record is an upload that crashed and is ignored)
    jobs/<job_id>.json             a finetuning job record (rewritten on each status change)
    jobs/<job_id>.events.jsonl     the job's events, appended one line each (a torn last
                                   line from a crash is skipped on reading)
    adapters/<slug>/v<N>/          version N of a fine-tuned model (PEFT layout plus
                                   ``jgraph_adapter.json``), built in a ``.tmp-*`` folder
                                   and renamed into place, so a version is complete or absent

Every JSON file is written with `atomic_write_json` (temp file, fsync, rename), so a SIGKILL
at any point leaves each record either old or new, never truncated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jgraph.core import atomic_write_bytes, atomic_write_json

__all__ = ["StateDir", "new_id"]

log = logging.getLogger(__name__)

ADAPTER_META = "jgraph_adapter.json"


def new_id(prefix: str) -> str:
    """A fresh random id such as ``file-3f9a...`` (24 hex digits, like OpenAI's)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def _slug(name: str) -> str:
    """A folder name for a model name (``ft:tiny:x`` has colons); a hash keeps it unique."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:64]
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("skipping unreadable state file %s (%s)", path, exc)
        return None
    return obj if isinstance(obj, dict) else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateDir:
    """Reads and writes the records of one state directory (see the module docstring).

    Not thread-safe by itself: the service calls it under its own lock.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        for sub in ("files", "jobs", "adapters"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- files ----------------------------------------------------------------------------
    def add_file(self, data: bytes, *, filename: str, purpose: str) -> dict[str, Any]:
        fid = new_id("file")
        atomic_write_bytes(self.root / "files" / f"{fid}.jsonl", data)
        rec = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        atomic_write_json(self.root / "files" / f"{fid}.json", rec)
        return rec

    def files(self) -> list[dict[str, Any]]:
        recs = [_read_json(p) for p in sorted((self.root / "files").glob("file-*.json"))]
        return sorted((r for r in recs if r), key=lambda r: (r["created_at"], r["id"]))

    def file(self, fid: str) -> dict[str, Any] | None:
        if not re.fullmatch(r"file-[0-9a-f]+", fid):
            return None
        return _read_json(self.root / "files" / f"{fid}.json")

    def file_bytes(self, fid: str) -> bytes | None:
        if self.file(fid) is None:
            return None
        try:
            return (self.root / "files" / f"{fid}.jsonl").read_bytes()
        except OSError:
            return None

    def delete_file(self, fid: str) -> bool:
        if self.file(fid) is None:
            return False
        # Record first: a crash in between leaves orphan bytes, never a record without bytes.
        (self.root / "files" / f"{fid}.json").unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.root / "files" / f"{fid}.jsonl").unlink()
        return True

    # -- jobs -----------------------------------------------------------------------------
    def save_job(self, job: dict[str, Any]) -> None:
        atomic_write_json(self.root / "jobs" / f"{job['id']}.json", job)

    def jobs(self) -> list[dict[str, Any]]:
        recs = [_read_json(p) for p in sorted((self.root / "jobs").glob("ftjob-*.json"))]
        return sorted((r for r in recs if r), key=lambda r: (r["created_at"], r["id"]))

    def add_event(self, job_id: str, event: dict[str, Any]) -> None:
        with open(self.root / "jobs" / f"{job_id}.events.jsonl", "a") as f:
            # No fsync: a killed process loses nothing that reached the page cache, and the
            # engine thread writes one event per finetuning sample.
            f.write(json.dumps(event, sort_keys=True) + "\n")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        path = self.root / "jobs" / f"{job_id}.events.jsonl"
        out = []
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line torn by a crash mid-append
        return out

    # -- adapters -------------------------------------------------------------------------
    def save_adapter(
        self, name: str, write: Callable[[Path], object], *, job_id: str | None = None
    ) -> tuple[Path, int]:
        """Writes the next version of model ``name``: ``write(folder)`` fills a temp folder,
        which is then renamed to ``v<N>`` (atomic). Returns (folder, version)."""
        base = self.root / "adapters" / _slug(name)
        base.mkdir(parents=True, exist_ok=True)
        version = max((v for v, _ in self._versions(base)), default=0) + 1
        tmp = base / f".tmp-v{version}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            write(tmp)
            atomic_write_json(
                tmp / ADAPTER_META,
                {"name": name, "version": version, "job_id": job_id, "created_at": time.time()},
            )
            final = base / f"v{version:04d}"
            os.rename(tmp, final)
            _fsync_dir(base)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final, version

    @staticmethod
    def _versions(base: Path) -> list[tuple[int, Path]]:
        out = []
        for p in base.glob("v*"):
            m = re.fullmatch(r"v(\d+)", p.name)
            if m and (p / ADAPTER_META).is_file():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def adapters(self) -> dict[str, dict[str, Any]]:
        """Latest complete version of each fine-tuned model: name -> its meta plus ``path``.
        Leftover ``.tmp-*`` folders (a crash mid-save) are removed."""
        out: dict[str, dict[str, Any]] = {}
        for base in sorted((self.root / "adapters").iterdir()):
            if not base.is_dir():
                continue
            for tmp in base.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
            versions = self._versions(base)
            if not versions:
                continue
            meta = _read_json(versions[-1][1] / ADAPTER_META)
            if meta and isinstance(meta.get("name"), str):
                out[meta["name"]] = {**meta, "path": str(versions[-1][1])}
        return out
