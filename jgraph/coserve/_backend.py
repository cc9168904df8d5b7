"""Every access of the server to `CoServeEngine`, behind one class (`EngineBackend`).

The server's engine thread is the only caller, and it uses the engine's public API only
(`CoServeEngine.submit`, `abort`, `pop_result`, `stats`, `set_bank_adapter`,
`remove_bank_adapter`, and per finetuning job `add_job`, `add_finetuning`, `cancel_job`,
`trainable_adapter`, `remove_job`).

Adapter slots: the engine's bank has ``CoServeConfig.max_adapters`` fixed slots (fixed shapes:
no recompilation). A slot holds one *version* of one model under the bank name ``name@vN``;
`EngineBackend.ensure` loads a version into a free slot, or evicts the least recently used
version that no queued or running request uses. A new version goes into another slot, so
requests already running finish on the weights they started with (a per-request atomic
cutover), and the old version's slot is the first to be reused once they are done.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import jax

from jgraph.coserve._config import LoraConfig
from jgraph.coserve._engine import TRAINABLE, CoServeEngine, StepReport
from jgraph.coserve._requests import EngineStats

__all__ = ["BankFullError", "EngineBackend"]

log = logging.getLogger(__name__)

Lora = dict[str, dict[str, jax.Array]]


class BankFullError(RuntimeError):
    """Every adapter slot holds an adapter that queued or running requests use."""


@dataclasses.dataclass
class _Resident:
    used: float
    stale: bool = False


class EngineBackend:
    """The server's view of one `CoServeEngine` (see the module docstring).

    Args:
        engine: a built engine.
        init_adapter: makes the fresh trainable adapter of a finetuning job.
    """

    def __init__(self, engine: CoServeEngine, *, init_adapter: Callable[[], Lora]) -> None:
        self.engine = engine
        self._init_adapter = init_adapter
        self.reset()

    def reset(self) -> None:
        """Drops requests, finetuning and loaded adapters (a service restart on this engine)."""
        eng = self.engine
        eng.reset(lora=self._init_adapter(), key=jax.random.key(int(time.time_ns() % 2**31)))
        for name in eng.bank.names:
            if name:
                eng.remove_bank_adapter(name)
        self._resident: dict[str, _Resident] = {}
        self._rid_key: dict[int, str] = {}
        self._inflight: collections.Counter[str] = collections.Counter()

    # -- capacities -----------------------------------------------------------------------
    @property
    def max_request_len(self) -> int:
        return self.engine.scfg.max_request_len

    @property
    def ft_max_len(self) -> int:
        return self.engine.scfg.ft_max_len

    @property
    def grad_accum(self) -> int:
        return self.engine.scfg.grad_accum

    @property
    def vocab_size(self) -> int:
        return self.engine.cfg.vocab_size

    # -- adapters -------------------------------------------------------------------------
    def ensure(self, key: str, load: Callable[[], tuple[LoraConfig, Lora]]) -> None:
        """Makes adapter version ``key`` resident, loading it with ``load()`` into a free slot
        or the least recently used idle one (superseded versions first).

        Raises:
            BankFullError: every slot is used by queued or running requests.
            ConfigError: the adapter does not fit the bank (rank, targets, model shapes).
        """
        now = time.monotonic()
        if key in self._resident:
            self._resident[key].used = now
            return
        lora_cfg, lora = load()
        if len(self._resident) >= self.engine.scfg.max_adapters:
            idle = [k for k in self._resident if not self._inflight[k]]
            if not idle:
                raise BankFullError(
                    f"all {self.engine.scfg.max_adapters} adapter slots serve running requests"
                )
            victim = min(idle, key=lambda k: (not self._resident[k].stale, self._resident[k].used))
            self.engine.remove_bank_adapter(victim)
            del self._resident[victim]
            log.info("adapter %s evicted from the bank", victim)
        slot = self.engine.set_bank_adapter(key, lora_cfg, lora)
        self._resident[key] = _Resident(used=now)
        log.info("adapter %s loaded into bank slot %d", key, slot)

    def retire(self, key: str) -> None:
        """Marks an adapter version as superseded: its slot is reused first."""
        if key in self._resident:
            self._resident[key].stale = True

    def resident(self) -> list[str]:
        """The adapter versions in the bank, superseded ones excluded."""
        return [k for k, r in self._resident.items() if not r.stale]

    # -- inference ------------------------------------------------------------------------
    def submit(
        self,
        prompt: Sequence[int],
        *,
        max_new_tokens: int,
        adapter: str | None,
        temperature: float,
        eos_id: int | None,
    ) -> int:
        """Queues a request; ``adapter`` is a resident key, `TRAINABLE`, or None (base)."""
        rid = self.engine.submit(
            prompt,
            max_new_tokens=max_new_tokens,
            adapter=adapter,
            temperature=temperature,
            eos_id=eos_id,
        )
        if adapter is not None and adapter != TRAINABLE:
            self._rid_key[rid] = adapter
            self._inflight[adapter] += 1
        return rid

    def _release(self, rid: int) -> None:
        key = self._rid_key.pop(rid, None)
        if key is not None:
            self._inflight[key] -= 1

    def abort(self, rid: int) -> None:
        """Drops a queued or running request and frees its slot and pages."""
        self.engine.abort(rid)
        self._release(rid)

    def finish(self, rid: int) -> None:
        """Forgets a finished request (the engine keeps results otherwise)."""
        self.engine.pop_result(rid)
        self._release(rid)

    def step(self) -> StepReport:
        return self.engine.step()

    @property
    def busy(self) -> bool:
        return not self.engine.idle

    def stats(self) -> EngineStats:
        """The engine's load snapshot (queue, running, KV pages, steps, finetuning)."""
        return self.engine.stats()

    # -- finetuning -----------------------------------------------------------------------
    def start_training(
        self,
        job: str,
        samples: list[list[int]],
        *,
        epochs: int,
        grad_accum: int,
        learning_rate_multiplier: float,
    ) -> None:
        """Starts engine finetuning job ``job`` on a fresh adapter while requests keep running
        (it shares the finetuning budget with the other running jobs)."""
        self.engine.add_job(
            job, lora=self._init_adapter(), grad_accum=grad_accum,
            learning_rate_multiplier=learning_rate_multiplier,
        )  # fmt: skip
        self.engine.add_finetuning(samples, epochs=epochs, job=job)

    def stop_training(self, job: str) -> None:
        """Drops the job's samples (the one in flight too) and forgets it."""
        if job in self.engine.jobs:
            self.engine.cancel_job(job)
            self.engine.remove_job(job)

    def finish_training(self, job: str) -> Lora:
        """The finished job's adapter; the engine forgets the job."""
        lora = self.engine.trainable_adapter(job)
        self.engine.remove_job(job)
        return lora
