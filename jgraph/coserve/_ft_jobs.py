"""Several finetuning jobs sharing the co-serving step's finetuning budget (host side, no jax).

Each job has its own samples, adapter and optimizer state (with its own gradient accumulation
and learning-rate multiplier: `accumulate`). One job is *active*: its adapter and optimizer
state are the step's trainable slot. At a sample boundary the engine asks `FinetuneJobs.pick`
for the next job, round robin over the jobs with work left, and swaps the device state of the
previous job out (kept as the arrays it was) and the next one's in: jobs alternate sample by
sample, so they share the finetuning tokens of every step the SLO controller allows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from jgraph.core import ConfigError
from jgraph.coserve._finetune import FinetuneCursor

__all__ = ["DEFAULT_JOB", "FinetuneJob", "FinetuneJobs", "JobInfo"]

DEFAULT_JOB = "default"
"""The job `CoServeEngine.add_finetuning` feeds unless told otherwise (its adapter is the one
the engine was built with)."""


@dataclasses.dataclass
class FinetuneJob:
    """One job's host state; ``stash`` holds its (adapter, optimizer state) while inactive."""

    name: str
    grad_accum: int
    lr_multiplier: float
    cursor: FinetuneCursor = dataclasses.field(default_factory=FinetuneCursor)
    stash: tuple[Any, Any] | None = None
    forward_tokens: int = 0
    updates: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobInfo:
    """A finetuning job's progress (`CoServeEngine.jobs`).

    Attributes:
        name: the job's name.
        active: its adapter is in the step's trainable slot now.
        queued: samples not started yet.
        samples_done: samples trained (forward and backward).
        updates: optimizer updates applied.
        forward_tokens: finetuning forward tokens run.
        losses: loss of every completed sample, in order.
        grad_accum: samples per update.
        lr_multiplier: multiplier of the optimizer's learning rate.
    """

    name: str
    active: bool
    queued: int
    samples_done: int
    updates: int
    forward_tokens: int
    losses: tuple[float, ...]
    grad_accum: int
    lr_multiplier: float


class FinetuneJobs:
    """The jobs by name (insertion order) and which one is active."""

    def __init__(self, default: FinetuneJob) -> None:
        self._jobs: dict[str, FinetuneJob] = {default.name: default}
        self.active = default.name
        self.losses: list[float] = []  # every job's completed samples, in completion order

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def get(self, name: str) -> FinetuneJob:
        if name not in self._jobs:
            raise ConfigError(
                "finetuning job", name, "does not exist", f"use one of {sorted(self._jobs)}"
            )
        return self._jobs[name]

    def add(self, job: FinetuneJob) -> None:
        if job.name in self._jobs:
            raise ConfigError("finetuning job", job.name, "exists already", "pick another name")
        self._jobs[job.name] = job

    def remove(self, name: str) -> FinetuneJob:
        self.get(name)  # unknown names get the error that lists the jobs
        if name == self.active:
            raise ConfigError(
                "finetuning job", name, "is active", "cancel it (the engine switches jobs first)"
            )
        return self._jobs.pop(name)

    @property
    def current(self) -> FinetuneJob:
        return self._jobs[self.active]

    @property
    def busy(self) -> bool:
        return any(j.cursor.busy for j in self._jobs.values())

    def pick(self) -> str:
        """The job to run next (called between samples): the first job after the active one,
        in insertion order and cyclically, that has samples queued; the active one when no
        other has work."""
        names = list(self._jobs)
        i = names.index(self.active)
        for name in names[i + 1 :] + names[: i + 1]:
            if self._jobs[name].cursor.busy:
                return name
        return self.active

    def info(self, name: str) -> JobInfo:
        j = self.get(name)
        c = j.cursor
        return JobInfo(
            name=name,
            active=name == self.active,
            queued=len(c.samples),
            samples_done=c.samples_done,
            updates=j.updates,
            forward_tokens=j.forward_tokens,
            losses=tuple(c.losses),
            grad_accum=j.grad_accum,
            lr_multiplier=j.lr_multiplier,
        )
