"""The scheduler: one step's plan from the queue, the running requests and free capacity
(pure: frozen dataclasses in, a frozen `StepPlan` out; no jax).

`plan` follows FlexLLM's batch construction (spec §a.3) with vLLM-style on-demand KV pages:

1. **Decode rows** first: one token for every running request that is generating, oldest
   admission first. A decode token at position p needs logical page ``p // page_size``; if the
   request does not hold it yet, it is granted from the free pages. When none is free (KV
   pressure), the **most recently admitted** running request is preempted: its pages and slot
   go back to the free lists and it returns to the head of the queue, to be re-prefilled
   later with its prompt and the tokens generated so far (recompute preemption). If the
   request that needs the page is itself the most recent, it is the one preempted.
2. **Chunked prefill**, FCFS: running requests whose prompt is not fully in the cache yet
   (their pages were granted at admission), then admissions from the head of the queue while
   the token budget is not used up, a slot is free and the free pages hold the request's
   tokens plus the next one (``ceil((n + 1) / page_size)`` pages). A request that does not
   fit blocks the ones behind it (FCFS). Nothing is admitted in a step that preempted.
3. **Finetuning forward tokens** from the leftover budget, capped by ``ft_budget``.
   ``inference_cap`` (a budget policy's decision, e.g. temporal sharing's finetuning turn)
   caps the decode and prefill rows of steps 1-2 (decode rows stay oldest first); the rows
   it leaves unused go to finetuning.
4. **Backward**: when the finetuning sample's forward is complete after this step (and
   ``allow_backward``), the step runs one backward step.

The token budget bounds decode + prefill + finetuning rows. Pages and slots named in the plan
are taken from the free lists given, so applying a plan never hands out an id twice.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

__all__ = ["Admission", "Queued", "Row", "Running", "StepPlan", "plan"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Running:
    """A running request as the planner sees it.

    Attributes:
        rid: request id.
        order: admission sequence number (larger = admitted more recently).
        slot: its request slot.
        n_tokens: prompt + generated tokens so far.
        cached: tokens whose K/V are in the cache (``n_tokens - 1`` while generating).
        pages: the KV pages it holds, logical page order.
    """

    rid: int
    order: int
    slot: int
    n_tokens: int
    cached: int
    pages: tuple[int, ...]

    @property
    def generating(self) -> bool:
        return 0 < self.cached == self.n_tokens - 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Queued:
    """A waiting request: its id and tokens to prefill (prompt + any generated before a
    preemption)."""

    rid: int
    n_tokens: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """``count`` consecutive tokens of request ``rid`` from position ``start``; ``samples``:
    the last row's output is the request's next token (decode, or a prompt's last chunk)."""

    rid: int
    start: int
    count: int
    kind: Literal["decode", "prefill"]
    samples: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class Admission:
    """Queue head ``rid`` enters slot ``slot`` holding ``pages`` (logical pages in order)."""

    rid: int
    slot: int
    pages: tuple[int, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepPlan:
    """One step's work, applied in this order: ``preempted``, ``grants``, ``admitted``; then
    the batch holds ``rows`` (in order) and ``ft_tokens`` finetuning forward tokens.

    Attributes:
        rows: inference rows, decode rows first.
        admitted: requests admitted from the head of the queue, in queue order.
        grants: (rid, page) appended to a running request's pages.
        preempted: requests preempted, most recently admitted first (each goes back to the
            head of the queue, so the last one listed ends up first).
        ft_tokens: finetuning forward tokens.
        backward: run one backward step.
    """

    rows: tuple[Row, ...] = ()
    admitted: tuple[Admission, ...] = ()
    grants: tuple[tuple[int, int], ...] = ()
    preempted: tuple[int, ...] = ()
    ft_tokens: int = 0
    backward: bool = False

    @property
    def decode_tokens(self) -> int:
        return sum(r.count for r in self.rows if r.kind == "decode")

    @property
    def prefill_tokens(self) -> int:
        return sum(r.count for r in self.rows if r.kind == "prefill")

    @property
    def tokens(self) -> int:
        """All batch rows: inference plus finetuning forward."""
        return self.decode_tokens + self.prefill_tokens + self.ft_tokens


def pages_for(n_tokens: int, page_size: int) -> int:
    """Pages that hold ``n_tokens`` positions."""
    return math.ceil(n_tokens / page_size)


def plan(
    *,
    running: Sequence[Running],
    queue: Sequence[Queued],
    free_pages: Sequence[int],
    free_slots: Sequence[int],
    token_budget: int,
    page_size: int,
    ft_fwd_left: int = 0,
    ft_active: bool = False,
    ft_budget: int | None = None,
    allow_backward: bool = True,
    inference_cap: int | None = None,
) -> StepPlan:
    """Plans one step (see the module docstring).

    Args:
        running: running requests (any order).
        queue: waiting requests, head first.
        free_pages: free KV page ids (handed out in this order).
        free_slots: free request slots (handed out in this order).
        token_budget: rows per step.
        page_size: tokens per KV page.
        ft_fwd_left: forward tokens left of the current finetuning sample (0 while its
            backward runs).
        ft_active: a finetuning sample is loaded (forward or backward in progress).
        ft_budget: cap on finetuning forward tokens this step (None: the leftover budget).
        allow_backward: a backward step may run this step.
        inference_cap: cap on decode + prefill rows this step (None: the token budget).

    Example:
        >>> r = Running(rid=0, order=0, slot=0, n_tokens=5, cached=4, pages=(0, 1))
        >>> p = plan(running=[r], queue=[Queued(rid=1, n_tokens=6)], free_pages=[2, 3, 4],
        ...          free_slots=[1], token_budget=4, page_size=4)
        >>> [(x.rid, x.start, x.count, x.kind) for x in p.rows], p.admitted[0].pages
        ([(0, 4, 1, 'decode'), (1, 0, 3, 'prefill')], (2, 3))
    """
    pages, slots = list(free_pages), list(free_slots)
    live = sorted(running, key=lambda r: r.order)  # oldest first; victims come from the end
    rows: list[Row] = []
    grants: list[tuple[int, int]] = []
    preempted: list[int] = []
    # ``budget`` counts the inference rows still allowed; finetuning gets what they leave.
    budget = token_budget if inference_cap is None else max(0, min(token_budget, inference_cap))

    # 1. Decode rows, oldest first; the most recent request is preempted under KV pressure.
    i = 0
    while i < len(live) and budget > 0:
        r = live[i]
        if not r.generating:
            i += 1
            continue
        needs_page = r.cached // page_size >= len(r.pages)
        while needs_page and not pages:
            # The victim is never a planned row (those are older than r) and holds no grant.
            victim = live.pop()
            preempted.append(victim.rid)
            pages = sorted([*pages, *victim.pages])
            slots = sorted([*slots, victim.slot])
            if victim.rid == r.rid:
                break
        if preempted and preempted[-1] == r.rid:
            continue  # r itself went back to the queue; live[i] is now the next one
        if needs_page:
            grants.append((r.rid, pages.pop(0)))
        rows.append(Row(rid=r.rid, start=r.cached, count=1, kind="decode", samples=True))
        budget -= 1
        i += 1

    # 2. Chunked prefill: running requests first, then admissions (FCFS).
    for r in live:
        if budget <= 0:
            break
        if r.generating or r.cached >= r.n_tokens:
            continue
        c = min(r.n_tokens - r.cached, budget)
        rows.append(_prefill(r.rid, r.cached, c, r.n_tokens))
        budget -= c
    admitted: list[Admission] = []
    if not preempted:
        for q in queue:
            need = pages_for(q.n_tokens + 1, page_size)
            if budget <= 0 or not slots or need > len(pages):
                break  # FCFS: later requests wait behind the head of the queue
            adm = Admission(rid=q.rid, slot=slots.pop(0), pages=tuple(pages[:need]))
            del pages[:need]
            admitted.append(adm)
            c = min(q.n_tokens, budget)
            rows.append(_prefill(q.rid, 0, c, q.n_tokens))
            budget -= c

    # 3-4. Finetuning forward in the leftover budget, then the backward.
    ft = 0
    if ft_active:
        left = token_budget - sum(r.count for r in rows)
        ft = max(0, min(ft_fwd_left, left, token_budget if ft_budget is None else ft_budget))
    backward = ft_active and allow_backward and ft_fwd_left - ft == 0
    return StepPlan(
        rows=tuple(rows),
        admitted=tuple(admitted),
        grants=tuple(grants),
        preempted=tuple(preempted),
        ft_tokens=ft,
        backward=backward,
    )


def _prefill(rid: int, start: int, count: int, n_tokens: int) -> Row:
    return Row(rid=rid, start=start, count=count, kind="prefill", samples=start + count == n_tokens)
