"""Every access of the server to `CoServeEngine`, behind one class (`EngineBackend`).

The server's engine thread is the only caller. Some operations the engine does not offer yet
are done here on its attributes; each is marked ``to be replaced by`` the engine API that the
engine split of issue #16 adds (``set_bank_adapter``/``remove_bank_adapter``, request abort,
starting a finetuning job without dropping requests), so that re-pointing the server means
editing this module only.

Adapter slots: the engine's `AdapterBank` has ``CoServeConfig.max_adapters`` fixed slots
(fixed shapes: no recompilation). A slot holds one *version* of one model under the key
``name@vN``; `EngineBackend.ensure` loads a key into a free slot, or evicts the least
recently used slot that no running request uses. A new version goes into another slot, so
requests already running finish on the weights they started with (a per-request atomic
cutover), and the old version's slot is the first to be reused once they are done.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jgraph.core import ConfigError
from jgraph.coserve._backward import multi_steps
from jgraph.coserve._config import LoraConfig
from jgraph.coserve._engine import TRAINABLE, CoServeEngine, StepReport
from jgraph.coserve._lora import AdapterBank

__all__ = ["BankFullError", "EngineBackend"]

log = logging.getLogger(__name__)

Lora = dict[str, dict[str, jax.Array]]


class BankFullError(RuntimeError):
    """Every adapter slot holds an adapter that running requests use."""


def _empty(i: int) -> str:
    return f"<empty slot {i}>"


def set_bank_slot(
    engine: CoServeEngine, slot: int, key: str, lora_cfg: LoraConfig | None, lora: Lora | None
) -> None:
    """Writes one adapter (or zeros, for None) into bank slot ``slot`` under the name ``key``.

    To be replaced by ``CoServeEngine.set_bank_adapter(name, lora_cfg, lora)`` /
    ``remove_bank_adapter(name)``: this rebuilds the engine's `AdapterBank` from its arrays
    (same shapes and dtypes, so the jitted step does not recompile) and assumes no mesh.

    Raises:
        ConfigError: the adapter's rank exceeds the bank's, or it targets a projection the
            bank was not built with.
    """
    bank = engine.bank
    r_max = next(iter(bank.weights.values()))["A"].shape[-1]
    if lora_cfg is not None and lora is not None:
        if lora_cfg.rank > r_max:
            raise ConfigError(
                f"adapter {key!r} rank", lora_cfg.rank, f"exceeds the bank rank {r_max}",
                "raise ServeConfig.bank_rank",
            )  # fmt: skip
        extra = set(lora) - set(bank.weights)
        if extra:
            raise ConfigError(
                f"adapter {key!r} targets", sorted(extra), "are not in the bank",
                f"use adapters on {sorted(bank.weights)} or extend ServeConfig.lora's targets",
            )  # fmt: skip
    weights = {}
    for t, ab in bank.weights.items():
        A, B = ab["A"], ab["B"]
        newA, newB = jnp.zeros(A.shape[1:], A.dtype), jnp.zeros(B.shape[1:], B.dtype)
        if lora is not None and lora_cfg is not None and t in lora:
            r = lora_cfg.rank
            newA = newA.at[..., :r].set(jnp.asarray(lora[t]["A"], A.dtype))
            newB = newB.at[..., :r, :].set(jnp.asarray(lora[t]["B"], B.dtype))
        weights[t] = {"A": A.at[slot].set(newA), "B": B.at[slot].set(newB)}
    scale = 0.0 if lora_cfg is None else lora_cfg.scale
    names = list(bank.names) + [_empty(i) for i in range(len(bank.names), bank.scales.shape[0])]
    names[slot] = key
    engine.bank = AdapterBank(
        names=tuple(names), weights=weights, scales=bank.scales.at[slot].set(scale)
    )
    engine._bank_w = weights  # the step reads this copy (sharded when the engine has a mesh)


@dataclasses.dataclass
class _Slot:
    key: str | None = None
    used: float = 0.0
    stale: bool = False


class EngineBackend:
    """The server's view of one `CoServeEngine` (see the module docstring).

    Args:
        engine: a built engine; its bank must have ``max_adapters`` slots.
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
        n = eng.scfg.max_adapters
        for i in range(n):
            set_bank_slot(eng, i, _empty(i), None, None)
        self._slots = [_Slot() for _ in range(n)]
        self._rid_slot: dict[int, int] = {}
        self._inflight: collections.Counter[int] = collections.Counter()
        self._training = False

    # -- capacities -----------------------------------------------------------------------
    @property
    def max_request_len(self) -> int:
        return self.engine.scfg.max_request_len

    @property
    def ft_max_len(self) -> int:
        return self.engine.scfg.ft_max_len

    @property
    def vocab_size(self) -> int:
        return self.engine.cfg.vocab_size

    # -- adapters -------------------------------------------------------------------------
    def ensure(self, key: str, load: Callable[[], tuple[LoraConfig, Lora]]) -> None:
        """Makes adapter ``key`` resident, loading it with ``load()`` into a free slot or the
        least recently used idle one.

        Raises:
            BankFullError: every slot is used by running requests.
        """
        now = time.monotonic()
        for s in self._slots:
            if s.key == key and not s.stale:
                s.used = now
                return
        idle = [i for i, s in enumerate(self._slots) if not self._inflight[i]]
        if not idle:
            raise BankFullError(f"all {len(self._slots)} adapter slots serve running requests")
        # Empty slots first, then stale versions, then the least recently used.
        i = min(idle, key=lambda j: (self._slots[j].key is not None, not self._slots[j].stale,
                                     self._slots[j].used))  # fmt: skip
        lora_cfg, lora = load()
        set_bank_slot(self.engine, i, key, lora_cfg, lora)
        self._slots[i] = _Slot(key=key, used=now)
        log.info("adapter %s loaded into bank slot %d", key, i)

    def retire(self, key: str) -> None:
        """Marks an adapter version as superseded: its slot is reused first."""
        for s in self._slots:
            if s.key == key:
                s.stale = True

    def resident(self) -> list[str]:
        return [s.key for s in self._slots if s.key is not None and not s.stale]

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
            slot = self.engine.bank.index(adapter)
            self._rid_slot[rid] = slot
            self._inflight[slot] += 1
        return rid

    def _release(self, rid: int) -> None:
        slot = self._rid_slot.pop(rid, None)
        if slot is not None:
            self._inflight[slot] -= 1

    def abort(self, rid: int) -> None:
        """Drops a queued or running request and frees its slot and pages.

        To be replaced by the request manager's abort: this edits the engine's queue and
        running list directly (between steps, in the engine thread)."""
        eng: Any = self.engine
        for req in list(eng._queue):
            if req.rid == rid:
                eng._queue.remove(req)
        for req in list(eng._running):
            if req.rid == rid:
                eng._retire(req)
        eng._results.pop(rid, None)
        self._release(rid)

    def finish(self, rid: int) -> None:
        """Forgets a finished request (the engine keeps results otherwise)."""
        self.engine._results.pop(rid, None)
        self._release(rid)

    def step(self) -> StepReport:
        return self.engine.step()

    @property
    def busy(self) -> bool:
        return not self.engine.idle

    def load(self) -> tuple[int, int, float]:
        """(waiting requests, running requests, KV-page utilization)."""
        eng: Any = self.engine  # to be replaced by the allocator's counters
        used = 1.0 - len(eng._free_pages) / eng.scfg.num_pages
        return len(eng._queue), len(eng._running), used

    # -- finetuning -----------------------------------------------------------------------
    def start_training(self, samples: list[list[int]], *, epochs: int) -> None:
        """Starts a job on a fresh trainable adapter while requests keep running.

        To be replaced by the request manager's finetuning jobs: this resets the trainable
        adapter, its gradient and optimizer state inside `CoServeState` (``engine.reset``
        would also drop every request and the KV cache).
        """
        eng: Any = self.engine
        self.stop_training()
        lora = self._init_adapter()
        f32 = jnp.float32
        eng.state = dataclasses.replace(
            eng.state,
            lora=jax.tree.map(jnp.copy, lora),
            grad=jax.tree.map(lambda a: jnp.zeros(a.shape, f32), lora),
            opt_state=multi_steps(eng._optimizer, eng.scfg).init(lora),
            loss_acc=jnp.zeros((), f32),
            samples_done=jnp.zeros((), jnp.int32),
            updates_done=jnp.zeros((), jnp.int32),
        )
        eng.losses = []
        eng.add_finetuning(samples, epochs=epochs)
        self._training = True

    def stop_training(self) -> None:
        """Drops the queued samples and the one in flight (takes effect at the next step).

        To be replaced by cancelling a job in the request manager."""
        eng: Any = self.engine
        eng._samples.clear()
        eng._ft, eng._bwd_chunk, eng._ft_cursor, eng._bwd_first = None, None, 0, False
        self._training = False

    @property
    def training_done(self) -> bool:
        """The started job has no sample left (queued or in flight)."""
        eng: Any = self.engine
        return not eng._samples and eng._ft is None

    def trainable_adapter(self) -> Lora:
        return self.engine.trainable_adapter()
