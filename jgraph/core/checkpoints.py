"""One training run's Orbax checkpoints: the state and the run record, committed together.

Shared by `jgraph.quant` and `jgraph.pipeline` training loops. Each saved step
holds two items: ``state`` (any pytree of arrays, sharded ones included;
`ocp.args.StandardSave`) and ``history`` (a JSON record: the settings a resume
must match, the history so far, anything else the loop needs). Orbax writes a
step into ``<step>.orbax-checkpoint-tmp`` and renames it once both items are on
disk, so a process killed at any point leaves either the whole step or none of
it: the history can never lag the weights (as a ``history.json`` written after
the save could), and a folder whose first save was interrupted holds no step and
simply starts over. Orbax is imported when a `Checkpoints` is made, not with
`jgraph.core`.

Example:
    >>> import tempfile, jax.numpy as jnp
    >>> ckpt = Checkpoints(tempfile.mkdtemp())
    >>> ckpt.save(1, {"w": jnp.ones(2)}, {"history": [{"loss": 0.5}]})
    >>> ckpt.latest(), ckpt.record(1)["history"], ckpt.state(1, {"w": jnp.zeros(2)})["w"].tolist()
    (1, [{'loss': 0.5}], [1.0, 1.0])
    >>> ckpt.close()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from jgraph.core import ConfigError

__all__ = ["Checkpoints"]

_STATE, _RECORD = "state", "history"


class Checkpoints:
    """The checkpoint folder of one training run.

    Args:
        ckpt_dir: the folder (created if missing).
        max_to_keep: how many of the newest steps stay on disk.
    """

    def __init__(self, ckpt_dir: str | Path, *, max_to_keep: int = 1) -> None:
        import orbax.checkpoint as ocp

        self.dir = Path(ckpt_dir)
        self._ocp = ocp
        self._mngr = ocp.CheckpointManager(
            self.dir.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest(self) -> int | None:
        """The newest fully written step, or None (interrupted first saves do not count)."""
        return self._mngr.latest_step()

    def record(self, step: int) -> dict[str, Any]:
        """The JSON record saved with ``step``: ``meta``, ``history``, ``seconds``."""
        if not (self.dir / str(step) / _RECORD).is_dir():
            raise ConfigError(
                "resume",
                str(self.dir),
                f"holds a checkpoint (step {step}) without its run record "
                "(written by an older jgraph, which kept history.json beside it)",
                "start this run in a new folder",
            )
        ocp = self._ocp
        restored = self._mngr.restore(
            step, args=ocp.args.Composite(**{_RECORD: ocp.args.JsonRestore()})
        )
        return dict(restored[_RECORD])

    def state(self, step: int, like: Any) -> Any:
        """The state saved with ``step``, restored to the structure and dtypes of ``like``."""
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._mngr.restore(
            step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
        )
        return restored[_STATE]

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Writes ``state`` and ``record`` as one step and waits until it is committed."""
        ocp = self._ocp
        self._mngr.save(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardSave(state), _RECORD: ocp.args.JsonSave(record)}
            ),
        )
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()
