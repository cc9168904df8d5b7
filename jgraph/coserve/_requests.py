"""Host-side request book-keeping: the queue, running requests, their KV pages and slots, and
the page table; applies a `StepPlan` and the sampled tokens (pure Python + numpy, no jax).

The engine asks `RequestTable.plan` for a step, fills the batch from `RequestTable.rows`,
runs the device step, then calls `RequestTable.finish_step` with the sampled tokens.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from jgraph.coserve._alloc import AllocError, IdPool
from jgraph.coserve._paged import INVALID
from jgraph.coserve._scheduler import Queued, Running, StepPlan, plan

__all__ = ["EngineStats", "Request", "RequestTable"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineStats:
    """A snapshot of the engine's load (`CoServeEngine.stats`), for metrics and admission.

    Attributes:
        waiting: inference requests queued (not admitted, or preempted).
        running: inference requests holding a slot.
        free_pages: KV pages free.
        num_pages: KV pages in the pool.
        free_slots: request slots free.
        steps: steps run since the last `CoServeEngine.reset`.
        ft_samples_left: finetuning samples queued or in flight.
        ft_samples_done: finetuning samples completed.
    """

    waiting: int
    running: int
    free_pages: int
    num_pages: int
    free_slots: int
    steps: int
    ft_samples_left: int
    ft_samples_done: int

    @property
    def kv_utilization(self) -> float:
        """Fraction of KV pages held by running requests (0..1)."""
        return 1.0 - self.free_pages / self.num_pages if self.num_pages else 0.0


@dataclasses.dataclass
class Request:
    """One inference request (mutable host state)."""

    rid: int
    tokens: list[int]  # prompt + generated
    prompt_len: int
    max_new: int
    adapter: int
    temperature: float
    eos_id: int | None
    slot: int = INVALID
    pages: list[int] = dataclasses.field(default_factory=list)
    cached: int = 0  # tokens whose K/V are in the cache
    order: int = -1  # admission sequence number
    preemptions: int = 0
    top_p: float = 1.0
    # Raw PRNG key data of the request's seed (`seed_key`); None for greedy requests.
    key_data: np.ndarray | None = None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def done(self) -> bool:
        g = self.generated
        return len(g) >= self.max_new or (bool(g) and g[-1] == self.eos_id)


class RequestTable:
    """Queue, running requests, page/slot pools and the page table [R, max_pages_per_request].

    Args:
        max_requests: request slots.
        num_pages: KV pages in the pool.
        max_pages_per_request: page-table width.
    """

    def __init__(self, *, max_requests: int, num_pages: int, max_pages_per_request: int) -> None:
        self.pages = IdPool(num_pages, name="page")
        self.slots = IdPool(max_requests, name="slot")
        self.page_table = np.full((max_requests, max_pages_per_request), INVALID, np.int32)
        self.queue: collections.deque[Request] = collections.deque()
        self.running: dict[int, Request] = {}
        self.results: dict[int, list[int]] = {}
        self._admissions = 0

    def __bool__(self) -> bool:
        return bool(self.queue or self.running)

    def requests(self) -> list[Request]:
        """Queued and running requests."""
        return [*self.queue, *self.running.values()]

    def plan(
        self,
        *,
        token_budget: int,
        page_size: int,
        ft_fwd_left: int = 0,
        ft_active: bool = False,
        ft_budget: int | None = None,
        allow_backward: bool = True,
        inference_cap: int | None = None,
    ) -> StepPlan:
        """The scheduler's plan for the current state (applies nothing)."""
        running = [
            Running(
                rid=r.rid,
                order=r.order,
                slot=r.slot,
                n_tokens=len(r.tokens),
                cached=r.cached,
                pages=tuple(r.pages),
            )
            for r in self.running.values()
        ]
        return plan(
            running=running,
            queue=[Queued(rid=r.rid, n_tokens=len(r.tokens)) for r in self.queue],
            free_pages=self.pages.free_ids(),
            free_slots=self.slots.free_ids(),
            token_budget=token_budget,
            page_size=page_size,
            ft_fwd_left=ft_fwd_left,
            ft_active=ft_active,
            ft_budget=ft_budget,
            allow_backward=allow_backward,
            inference_cap=inference_cap,
        )

    def apply(self, p: StepPlan) -> None:
        """Preempts, grants pages and admits as planned."""
        for rid in p.preempted:
            req = self.running.pop(rid)
            self._release(req)
            req.cached, req.order = 0, -1
            req.preemptions += 1
            self.queue.appendleft(req)  # recomputed later, ahead of newer requests
        for rid, page in p.grants:
            req = self.running[rid]
            self.pages.take([page])
            self.page_table[req.slot, len(req.pages)] = page
            req.pages.append(page)
        for adm in p.admitted:
            req = self.queue.popleft()
            if req.rid != adm.rid:
                raise AllocError(f"admission of {adm.rid} but the queue head is {req.rid}")
            self.slots.take([adm.slot])
            self.pages.take(adm.pages)
            req.slot, req.pages, req.order = adm.slot, list(adm.pages), self._admissions
            self._admissions += 1
            self.page_table[req.slot] = INVALID
            self.page_table[req.slot, : len(req.pages)] = req.pages
            self.running[req.rid] = req

    def finish_step(self, p: StepPlan, sampled: dict[int, int]) -> tuple[dict[int, int], list[int]]:
        """Advances the caches of ``p.rows``, appends ``sampled`` (rid -> token of its sampling
        row) and retires finished requests. Returns (new tokens, finished ids)."""
        new: dict[int, int] = {}
        finished: list[int] = []
        for row in p.rows:
            req = self.running[row.rid]
            req.cached += row.count
            if not row.samples:
                continue
            tok = sampled[row.rid]
            req.tokens.append(tok)
            new[req.rid] = tok
            if req.done:
                finished.append(req.rid)
                self.results[req.rid] = req.generated
                del self.running[req.rid]
                self._release(req)
        return new, finished

    def abort(self, rid: int) -> bool:
        """Drops request ``rid`` wherever it is: a queued one leaves the queue, a running one
        frees its slot and pages, a finished one's result is forgotten. Returns whether the
        request was known. Call it between steps (a plan refers to running requests)."""
        for req in self.queue:
            if req.rid == rid:
                self.queue.remove(req)
                return True
        req_ = self.running.pop(rid, None)
        if req_ is not None:
            self._release(req_)
            return True
        return self.results.pop(rid, None) is not None

    def _release(self, req: Request) -> None:
        self.pages.free(req.pages)
        self.slots.free([req.slot])
        self.page_table[req.slot] = INVALID
        req.slot, req.pages = INVALID, []

    def check(self) -> None:
        """Conservation of pages and slots, and the page table matches the holders.

        Raises:
            AllocError: the books do not balance.
        """
        live = list(self.running.values())
        self.pages.check(r.pages for r in live)
        self.slots.check([r.slot] for r in live)
        want = np.full_like(self.page_table, INVALID)
        for r in live:
            want[r.slot, : len(r.pages)] = r.pages
        if not np.array_equal(want, self.page_table):
            raise AllocError("the page table does not match the requests' pages")
