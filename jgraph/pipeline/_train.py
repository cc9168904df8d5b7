"""The pipelined training loop: steps, metrics, progress, Orbax checkpoints, resume.

A checkpoint holds the whole sharded state (every device's packed stage
parameters and optimizer state, and the step) plus, in the same Orbax step
(`jgraph.core.checkpoints`), the loss history and a fingerprint of the plan and graph, so a resumed run refuses another plan and
its next step equals the uninterrupted run's. Data comes from a function of
the step index, which is what makes a resumed run see the same batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jgraph.core import ConfigError, check_int, progress
from jgraph.core.checkpoints import Checkpoints
from jgraph.pipeline._runtime import PipelineProgram

__all__ = ["TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)

Batch = tuple[Mapping[str, Any], Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How long to train and where to keep checkpoints.

    Attributes:
        steps: total optimizer steps of the run.
        checkpoint_dir: Orbax checkpoint folder (None: no checkpoints).
        checkpoint_every: save every this many steps (and always at the end).
        resume: continue from the newest checkpoint in ``checkpoint_dir``; without
            it, a folder that already holds checkpoints is refused.
        stop_after: stop after this step (an interrupted run, for tests and demos).
    """

    steps: int
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 10
    resume: bool = False
    stop_after: int | None = None

    def __post_init__(self) -> None:
        check_int("TrainConfig.steps", self.steps, minimum=1)
        check_int("TrainConfig.checkpoint_every", self.checkpoint_every, minimum=1)
        if self.stop_after is not None:
            check_int("TrainConfig.stop_after", self.stop_after, minimum=1)
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("TrainConfig.resume", True, "needs a checkpoint_dir",
                              "pass checkpoint_dir=the folder of the run to resume")  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What `train` returns: the final state, per-step metrics, where it started."""

    state: dict[str, Any]
    history: list[dict[str, float]]
    resumed_from: int
    seconds: float


def fingerprint(program: PipelineProgram) -> str:
    """A hash of the plan and the graph's structure (a checkpoint fits only these)."""
    g = program.graph
    desc = {
        "plan": json.loads(program.plan.to_json()),
        "inputs": [(i.name, list(i.shape), i.dtype) for i in g.inputs],
        "nodes": [(n.name, list(n.inputs), repr(n.module)) for n in g.nodes],
    }
    for key in ("search_s",):
        desc["plan"].pop(key, None)
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(
    program: PipelineProgram,
    params: Mapping[str, Any],
    data: Callable[[int], Batch],
    config: TrainConfig,
) -> TrainResult:
    """Trains ``program`` from ``params`` on ``data(step)`` batches.

    Args:
        program: from `jgraph.pipeline.compile`.
        params: per-node Flax variables to start from (ignored when resuming).
        data: ``data(step) -> (inputs, targets)``, the global batch of a step; it
            must depend only on ``step`` for a resumed run to match.
        config: steps and checkpointing.

    Returns:
        The final state, the per-step history (``step``, ``loss``, ``seconds``)
        and the step it resumed from.

    Example:
        >>> # result = train(compile(plan, mg, loss, optax.adam(1e-3)), params,
        >>> #                lambda step: batch_of(step), TrainConfig(steps=100))
    """
    state = program.init(params)
    history: list[dict[str, float]] = []
    start = 0
    fp = fingerprint(program)
    ckpt = None
    if config.checkpoint_dir is not None:
        # The state and the history are one Orbax step: a kill never leaves one without the other.
        ckpt = Checkpoints(config.checkpoint_dir, max_to_keep=2)
        latest = ckpt.latest()
        if latest is not None and not config.resume:
            raise ConfigError(
                "TrainConfig.checkpoint_dir", str(ckpt.dir), f"already holds a run (step {latest})",
                "pass TrainConfig(resume=True) to continue it, or use a new folder",
            )  # fmt: skip
        if latest is not None:
            saved = ckpt.record(latest)
            if saved.get("fingerprint") != fp:
                raise ConfigError(
                    "TrainConfig.checkpoint_dir", str(ckpt.dir),
                    "holds a run of another plan or graph",
                    "resume with the same plan and model, or use a new folder",
                )  # fmt: skip
            state = ckpt.state(latest, state)
            start = int(latest)
            history = list(saved["history"])
            log.info("resumed from step %d in %s", start, ckpt.dir)
    last = config.steps if config.stop_after is None else min(config.steps, config.stop_after)
    t0 = time.perf_counter()
    for step in progress(range(start, last), description="pipeline train", total=last - start):
        inputs, targets = data(step)
        t = time.perf_counter()
        state, metrics = program.step(state, inputs, targets)
        loss = float(metrics["loss"])  # blocks: the step's time is then real
        if not np.isfinite(loss):
            log.warning("step %d: loss is %s", step + 1, loss)
        history.append({"step": step + 1, "loss": loss, "seconds": time.perf_counter() - t})
        log.info("step %d: loss %.5f", step + 1, loss)
        done = step + 1
        if ckpt is not None and (done % config.checkpoint_every == 0 or done == last):
            ckpt.save(done, state, {"fingerprint": fp, "history": history})
    if ckpt is not None:
        ckpt.close()
    return TrainResult(
        state=state, history=history, resumed_from=start, seconds=time.perf_counter() - t0
    )
