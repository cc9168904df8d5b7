"""A finished recipe run on disk: the hardened model, reloadable for export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

from jgraph.core import ConfigError, atomic_write_bytes
from jgraph.quant._harden import Hardened

__all__ = ["HARDENED_STATE", "SavedRun", "load_run", "save_hardened_state"]

HARDENED_STATE = "hardened.msgpack"
"""File name (in a run folder) of the hardened variables, codebooks and indices."""


def save_hardened_state(path: Path, hardened: Hardened) -> Path:
    """Writes a `Hardened` as msgpack (flax.serialization), atomically."""
    state = {
        "variables": hardened.variables,
        "codebooks": dict(hardened.codebooks),
        "indices": dict(hardened.indices),
    }
    return atomic_write_bytes(path, serialization.msgpack_serialize(_numpy(state)))


def _numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SavedRun:
    """What `load_run` reads back from a run folder.

    Attributes:
        model: the model's name (a `MODEL_NAMES` entry, or a custom model's
            class name).
        num_classes: logits the model outputs.
        input_shape: one example's shape (``[h, w, c]``).
        bits: DGMS index width.
        data: the run's data source (``digits`` or a path), for calibration
            and agreement checks.
        dgms_accuracy: the run's hard test accuracy.
        hardened: the hardened variables, codebooks and indices.
    """

    model: str
    num_classes: int
    input_shape: tuple[int, ...]
    bits: int
    data: str
    dgms_accuracy: float
    hardened: Hardened


def load_run(out: str | Path) -> SavedRun:
    """Loads a finished `run_recipe` / ``jgraph quant train`` folder.

    Args:
        out: the run's ``--out`` folder (``result.json`` and ``hardened.msgpack``).

    Returns:
        A `SavedRun`; with a bundled model, ``make_model(run.model,
        run.num_classes)`` applied to ``run.hardened.variables`` is the hard model.

    Raises:
        ConfigError: not a finished run folder, or one written by an older version.
    """
    out = Path(out)
    result, state = out / "result.json", out / HARDENED_STATE
    if not result.is_file():
        raise ConfigError(
            "run",
            str(out),
            "has no result.json (not a finished run)",
            "pass the --out folder of a finished `jgraph quant train` run",
        )
    if not state.is_file():
        raise ConfigError(
            "run",
            str(out),
            f"has no {HARDENED_STATE} (written by an older jgraph)",
            "train it again with this version",
        )
    try:
        record = json.loads(result.read_text())
        config = record["config"]
        raw = serialization.msgpack_restore(state.read_bytes())
        hardened = Hardened(
            dict(raw["variables"]),
            {k: np.asarray(v, np.float32) for k, v in raw["codebooks"].items()},
            {k: np.asarray(v, np.uint8) for k, v in raw["indices"].items()},
        )
        return SavedRun(
            model=str(config["model"]),
            num_classes=int(config["num_classes"]),
            input_shape=tuple(int(d) for d in config["input_shape"]),
            bits=int(config["quant"]["bits"]),
            data=str(config["data"]),
            dgms_accuracy=float(record["dgms_accuracy"]),
            hardened=hardened,
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise ConfigError(
            "run",
            str(out),
            f"holds a damaged run record ({type(err).__name__}: {err})",
            "train it again",
        ) from err
