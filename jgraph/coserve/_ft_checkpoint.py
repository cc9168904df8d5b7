"""Checkpoints of a finetuning job: device arrays with Orbax, host state as JSON.

A checkpoint of step s (= finetuning samples done) in folder D is Orbax's step folder ``D/s``
(adapter, optimizer state including gradients accumulated towards the next update, counters)
plus ``D/host_s.json`` (losses, the samples still queued, and a description of the engine that
wrote it). The JSON is written first and atomically: a crash before Orbax commits leaves only an
unused JSON behind, never a step without its host state.

Failures are `ConfigError`s that say which file or which setting is wrong: saving into a folder
that already holds this or a later step (another job's folder: Orbax would silently save
nothing), restoring into an engine whose model, LoRA config, gradient accumulation or optimizer
state differ from the ones saved, and a missing, truncated or malformed JSON or array file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import jax

from jgraph.core import ConfigError, atomic_write_json

__all__ = ["describe", "restore", "save"]

log = logging.getLogger(__name__)

_EARLIER = "restore an earlier checkpoint or restart the job"
_HOST_KEYS = {"losses": list, "samples": list, "samples_done": int, "engine": dict}


def describe(cfg: Any, lora_cfg: Any, grad_accum: int, tree: dict[str, Any]) -> dict[str, Any]:
    """What a restore must match, JSON-ready: the configs, ``grad_accum`` and the shapes and
    dtypes of every array of the checkpointed tree (the optimizer state's structure)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays = {jax.tree_util.keystr(k): [list(v.shape), str(v.dtype)] for k, v in leaves}
    desc = {
        "model": dataclasses.asdict(cfg),
        "lora": dataclasses.asdict(lora_cfg),
        "grad_accum": grad_accum,
        "arrays": arrays,
    }
    return json.loads(json.dumps(desc))  # tuples -> lists, as a JSON round trip returns them


def save(directory: str | Path, step: int, tree: dict[str, Any], host: dict[str, Any]) -> Path:
    """Writes step ``step``: ``host`` (with an ``engine`` entry from `describe`) as JSON, then
    ``tree`` with Orbax. Returns the absolute folder.

    Raises:
        ConfigError: the folder already holds step ``step`` or a later one, or Orbax did not
            save.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    mngr = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    )
    latest = mngr.latest_step()
    if latest is not None and latest >= step:
        raise ConfigError(
            "save_finetuning directory",
            str(directory),
            f"already holds checkpoint step {latest} >= this job's step {step} (another job's "
            "folder, or this job restarted from scratch)",
            "give each finetuning job its own checkpoint folder",
        )
    atomic_write_json(directory / f"host_{step}.json", host)
    if not mngr.save(step, args=ocp.args.StandardSave(tree)):
        raise ConfigError(
            "save_finetuning", str(directory), f"Orbax did not save step {step}", "retry"
        )
    mngr.wait_until_finished()
    # A manifest of the array files (sizes, hashes) lets a restore name a damaged file; it is
    # written last, so a crash before it leaves a step that restores without the file check.
    atomic_write_json(directory / f"files_{step}.json", _manifest(directory / str(step)))
    log.info("finetuning checkpoint %d written to %s", step, directory)
    return directory


def restore(
    directory: str | Path, tree: dict[str, Any], engine: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads the latest step in ``directory`` into arrays shaped like ``tree``, after checking
    that ``engine`` (`describe` of the restoring engine) matches the saved one.

    Returns:
        (restored tree, host JSON).

    Raises:
        ConfigError: no checkpoint, a missing/malformed/truncated file (named), or an engine
            that differs from the one that saved (the mismatching setting named).
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    mngr = ocp.CheckpointManager(directory)
    step = mngr.latest_step()
    if step is None:
        raise ConfigError(
            "restore_finetuning", str(directory), "holds no checkpoint", "save_finetuning"
        )
    host = _read_host(directory / f"host_{step}.json", step)
    _check_engine(host["engine"], engine, directory / f"host_{step}.json")
    _verify_files(directory, step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    try:
        restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # Orbax/TensorStore raise many types; all mean a damaged file
        raise ConfigError(
            "finetuning checkpoint",
            str(directory / str(step)),
            f"cannot be read ({type(e).__name__}: {_first_line(e)})",
            "restore an earlier checkpoint or restart the job",
        ) from e
    return restored, host


def _manifest(step_dir: Path) -> dict[str, list[Any]]:
    files = sorted(p for p in (step_dir / "default").rglob("*") if p.is_file())
    return {
        str(p.relative_to(step_dir)): [p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()]
        for p in files
    }


def _verify_files(directory: Path, step: int) -> None:
    path = directory / f"files_{step}.json"
    if not path.exists():
        log.warning("%s is missing: restoring step %d without the file check", path, step)
        return
    manifest = _read_json(path)
    for rel, entry in manifest.items():
        f = directory / str(step) / rel
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ConfigError("finetuning checkpoint", str(path), "is malformed", _EARLIER)
        if not f.is_file():
            raise ConfigError("finetuning checkpoint", str(f), "is missing", _EARLIER)
        size, digest = entry
        if f.stat().st_size != size:
            raise ConfigError(
                "finetuning checkpoint",
                str(f),
                f"is truncated or damaged ({f.stat().st_size} bytes, {size} written)",
                _EARLIER,
            )
        if hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            raise ConfigError(
                "finetuning checkpoint", str(f), "does not match its checksum", _EARLIER
            )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError("finetuning checkpoint", str(path), "is missing", _EARLIER) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            "finetuning checkpoint", str(path), f"is not valid JSON ({_first_line(e)})", _EARLIER
        ) from e
    if not isinstance(out, dict):
        raise ConfigError("finetuning checkpoint", str(path), "is not a JSON object", _EARLIER)
    return out


def _read_host(path: Path, step: int) -> dict[str, Any]:
    host = _read_json(path)
    for key, typ in _HOST_KEYS.items():
        if not isinstance(host.get(key), typ):
            raise ConfigError(
                "finetuning checkpoint",
                str(path),
                f"lacks {key!r} of type {typ.__name__} (truncated or malformed)",
                _EARLIER,
            )
    if host["samples_done"] != step:
        raise ConfigError(
            "finetuning checkpoint",
            str(path),
            f"says samples_done={host['samples_done']} for step {step}",
            _EARLIER,
        )
    return host


def _check_engine(saved: dict[str, Any], mine: dict[str, Any], path: Path) -> None:
    for key in ("model", "lora", "grad_accum", "arrays"):
        a, b = saved.get(key), mine[key]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            what = ", ".join(f"{k}: saved {a.get(k)} vs {b.get(k)}" for k in diff[:3])
        else:
            what = f"saved {a} vs {b}"
        name = {"arrays": "optimizer/adapter state"}.get(key, key)
        raise ConfigError(
            f"restore_finetuning {name}",
            str(path),
            f"differs from this engine's ({what})",
            "restore into an engine built with the settings the job was saved with",
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
