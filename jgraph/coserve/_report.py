"""`StepReport`: what one co-serving step did (returned by `CoServeEngine.step`)."""

from __future__ import annotations

import dataclasses

from jgraph.coserve._controller import FinetuneBudget

__all__ = ["StepReport"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepReport:
    """What one `CoServeEngine.step` did.

    Attributes:
        new_tokens: request id -> token sampled this step.
        finished: requests that completed this step.
        decode_tokens: decode rows in the batch.
        prefill_tokens: prefill rows in the batch.
        ft_forward_tokens: finetuning forward rows in the batch.
        bwd_chunk: finetuning backward step run this step (token chunk or layer group), or None.
        sample_loss: loss of the finetuning sample completed this step, or None.
        updated: the optimizer applied an update this step.
        preempted: requests preempted under KV pressure this step (recomputed later).
        ft_job: the finetuning job whose sample ran this step (forward or backward), or None.
        step_s: wall time of the step on the engine's clock, planning to the fetched result.
        budget: the budget policy's decision for this step (None without a policy).
    """

    new_tokens: dict[int, int]
    finished: tuple[int, ...]
    decode_tokens: int
    prefill_tokens: int
    ft_forward_tokens: int
    bwd_chunk: int | None
    sample_loss: float | None
    updated: bool
    preempted: tuple[int, ...] = ()
    ft_job: str | None = None
    step_s: float = 0.0
    budget: FinetuneBudget | None = None
