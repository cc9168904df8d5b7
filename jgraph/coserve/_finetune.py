"""Host-side cursor of the finetuning job: queued samples, the sample in flight, how far its
forward went, and which backward step comes next (pure Python + numpy, no jax).

A sample runs forward over one or more steps (as many tokens as the plan gives it), then its
backward one step at a time from index ``backward_steps - 1`` down to 0; the backward may
start in the step that completes the forward, since the device step runs its backward on the
buffers its forward just wrote.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from jgraph.coserve._paged import INVALID

__all__ = ["FinetuneCursor"]


class FinetuneCursor:
    """Samples to train and the position in the current one."""

    def __init__(self) -> None:
        self.samples: collections.deque[list[int]] = collections.deque()
        self.sample: list[int] | None = None  # in flight
        self.fwd_done = 0  # forward tokens of ``sample`` already run
        self.bwd: int | None = None  # next backward step index, None before the backward
        self.bwd_first = False
        self.losses: list[float] = []
        self.samples_done = 0

    @property
    def busy(self) -> bool:
        """Work left: a sample in flight or queued."""
        return bool(self.samples) or self.sample is not None

    def load(self) -> None:
        """Starts the next queued sample when none is in flight."""
        if self.sample is None and self.samples:
            self.sample, self.fwd_done, self.bwd = self.samples.popleft(), 0, None

    @property
    def fwd_left(self) -> int:
        """Forward tokens left of the sample in flight (0 once its backward started)."""
        if self.sample is None or self.bwd is not None:
            return 0
        return len(self.sample) - self.fwd_done

    def fill(self, b: dict[str, Any], n: int, m: int, adapter: int) -> None:
        """Puts the next ``m`` forward tokens into batch rows ``n .. n+m-1`` of ``b`` (numpy
        `StepBatch` fields) and the sample's loss scale."""
        if self.sample is None:
            return
        c0, sample = self.fwd_done, np.asarray(self.sample, np.int32)
        if m:
            s = slice(n, n + m)
            b["tokens"][s] = sample[c0 : c0 + m]
            b["positions"][s] = np.arange(c0, c0 + m)
            b["is_ft"][s] = True
            b["adapters"][s] = adapter
            nxt = np.arange(c0 + 1, c0 + m + 1)
            b["labels"][s] = np.where(nxt < len(sample), sample[np.minimum(nxt, len(sample) - 1)],
                                      INVALID)  # fmt: skip
            self.fwd_done += m
        b["loss_scale"] = np.float32(1.0 / (len(sample) - 1))

    def backward(self, b: dict[str, Any], n_steps: int) -> int:
        """Puts this step's backward step into ``b``; ``n_steps`` is the sample's count of
        backward steps (used when the backward starts). Returns the step index."""
        assert self.sample is not None, "a backward without a finetuning sample (a bug)"
        if self.bwd is None:
            self.bwd, self.bwd_first = n_steps - 1, True
        b["bwd_chunk"] = np.int32(self.bwd)
        b["bwd_len"] = np.int32(len(self.sample))
        b["bwd_first"] = np.bool_(self.bwd_first)
        b["bwd_last"] = np.bool_(self.bwd == 0)
        return self.bwd

    def backward_done(self, loss: float) -> float | None:
        """Advances past this step's backward step; returns the sample's loss when it was the
        sample's last (``loss`` is only read then)."""
        assert self.bwd is not None, "no backward step ran (a bug)"
        self.bwd_first = False
        if self.bwd > 0:
            self.bwd -= 1
            return None
        self.losses.append(loss)
        self.samples_done += 1
        self.sample, self.bwd = None, None
        return loss

    def state(self) -> dict[str, Any]:
        """The JSON-ready host state of a checkpoint (between samples)."""
        return {
            "losses": self.losses,
            "samples": list(self.samples),
            "samples_done": self.samples_done,
        }

    def load_state(self, host: dict[str, Any]) -> None:
        self.losses = [float(x) for x in host["losses"]]
        self.samples_done = int(host["samples_done"])
        self.samples = collections.deque([int(t) for t in s] for s in host["samples"])
        self.sample, self.bwd, self.fwd_done, self.bwd_first = None, None, 0, False
