"""The co-serving engine: device state and the jitted step, driven by the scheduler's plans.

Data flow: the caller `submit`s inference requests and `add_finetuning` samples, then calls
`step()` repeatedly. Each `step()`:

1. asks the scheduler (`jgraph.coserve._scheduler.plan`, through the `RequestTable` that holds
   the queue, running requests, KV pages and slots) for a `StepPlan`: decode rows, chunked
   prefill and admissions by free KV pages, page grants, preemptions under KV pressure (the
   most recently admitted request, recomputed later), finetuning forward tokens in the
   leftover budget (capped by ``ft_budget``) and whether a backward step runs (a token chunk,
   last chunk first, or a group of layers, top group first: ``CoServeConfig.backward_mode``);
2. applies the plan to the table, builds the numpy `StepBatch` from it and calls the jitted,
   state-donating step from `make_coserve_step` once (no recompilation: all shapes are fixed
   by `CoServeConfig`);
3. appends sampled tokens, retires finished requests (freeing slot and pages) and advances the
   finetuning cursors; returns a `StepReport`.

A preempted request keeps the tokens it generated; its prompt and those tokens are prefilled
again when it is re-admitted, so greedy outputs do not depend on preemption.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jgraph.core import ConfigError, check_int, check_number
from jgraph.coserve import _ft_checkpoint
from jgraph.coserve._backward import backward_steps, multi_steps
from jgraph.coserve._bank import BankSlots
from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._finetune import FinetuneCursor
from jgraph.coserve._lora import AdapterBank, init_lora
from jgraph.coserve._parallel import shard_tree
from jgraph.coserve._requests import EngineStats, Request, RequestTable
from jgraph.coserve._scheduler import StepPlan
from jgraph.coserve._step import (
    StepBatch,
    coserve_specs,
    empty_batch,
    init_state,
    make_coserve_step,
)

__all__ = ["TRAINABLE", "CoServeEngine", "StepReport"]

log = logging.getLogger(__name__)

TRAINABLE = "trainable"
"""Adapter name that makes an inference request use the adapter being finetuned."""


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


class CoServeEngine:
    """Co-serves greedy/sampled generation and LoRA finetuning in one jitted step per call.

    Args:
        cfg: model shape.
        params: base weights (`init_params` / `load_hf_checkpoint`).
        scfg: step capacities.
        lora_cfg: the trainable adapter's rank, alpha and targets.
        optimizer: optax optimizer for the trainable adapter (gradient accumulation over
            ``scfg.grad_accum`` samples is added).
        key: PRNG key (adapter init when ``lora`` is None, and sampling).
        bank: inference adapters (capacity ``scfg.max_adapters``); None for none.
        lora: initial trainable adapter (default: `init_lora`, B = 0).
        ft_tokens_per_step: cap on finetuning forward tokens per step (default: no cap beyond
            the leftover token budget).
        mesh: optional mesh with a ``MODEL`` axis: the step runs tensor-parallel
            (`make_coserve_step`), params, bank and state are placed with `coserve_specs`.

    Example:
        >>> import jax, optax
        >>> from jgraph.coserve import (CoServeConfig, CoServeEngine, LlamaConfig, LoraConfig,
        ...                             init_params)
        >>> cfg = LlamaConfig.tiny()
        >>> eng = CoServeEngine(cfg, init_params(cfg, key=jax.random.key(0)),
        ...                     CoServeConfig(token_budget=16, ft_max_len=16, bwd_chunk=8),
        ...                     LoraConfig(rank=2), optimizer=optax.sgd(1e-2), key=jax.random.key(1))
        >>> rid = eng.submit([256, 72, 105], max_new_tokens=3)
        >>> eng.add_finetuning([[256, 1, 2, 3, 4, 5]])
        >>> while not eng.idle:
        ...     _ = eng.step()
        >>> len(eng.result(rid)), eng.samples_done
        (3, 1)
    """

    def __init__(
        self,
        cfg: LlamaConfig,
        params: dict[str, Any],
        scfg: CoServeConfig,
        lora_cfg: LoraConfig,
        *,
        optimizer: optax.GradientTransformation,
        key: jax.Array,
        bank: AdapterBank | None = None,
        lora: dict[str, dict[str, jax.Array]] | None = None,
        ft_tokens_per_step: int | None = None,
        mesh: Mesh | None = None,
    ) -> None:
        self.cfg, self.scfg, self.lora_cfg = cfg, scfg, lora_cfg
        self.params = params
        k_init, k_state = jax.random.split(key)
        if bank is None:
            bank = AdapterBank.build(cfg, [], capacity=scfg.max_adapters)
        if bank.scales.shape[0] != scfg.max_adapters:
            raise ConfigError(
                "bank capacity",
                bank.scales.shape[0],
                f"!= CoServeConfig.max_adapters={scfg.max_adapters}",
                "build the bank with capacity=max_adapters",
            )
        if lora is None:
            lora = init_lora(cfg, lora_cfg, key=k_init)
        self.ft_tokens_per_step = (
            scfg.token_budget
            if ft_tokens_per_step is None
            else check_int("ft_tokens_per_step", ft_tokens_per_step, minimum=0)
        )
        self._optimizer = optimizer
        self.mesh = mesh
        self._state_specs = None
        targets = tuple(bank.weights)
        self._step = make_coserve_step(
            cfg, scfg, lora_cfg, optimizer, mesh=mesh, bank_targets=targets
        )
        specs = None
        if mesh is not None:
            ps, specs, self._state_specs = coserve_specs(
                cfg, scfg, lora_cfg, optimizer, mesh, targets
            )
            self.params = shard_tree(params, ps, mesh)
        self._bank = BankSlots(cfg, bank, mesh=mesh, specs=specs)
        self.reset(lora=lora, key=k_state)

    def reset(self, *, lora: dict[str, dict[str, jax.Array]], key: jax.Array) -> None:
        """Drops all requests and finetuning work and starts from ``lora``; keeps the compiled
        step (so tests and servers do not pay compilation again)."""
        if set(lora) != set(self.lora_cfg.targets):
            raise ConfigError(
                "lora targets",
                sorted(lora),
                f"!= LoraConfig.targets={self.lora_cfg.targets}",
                "pass an adapter with the configured targets",
            )
        scfg = self.scfg
        self.state = init_state(self.cfg, scfg, lora, self._optimizer, key=key)
        if self.mesh is not None:
            self.state = shard_tree(self.state, self._state_specs, self.mesh)
        self._table = RequestTable(
            max_requests=scfg.max_requests,
            num_pages=scfg.num_pages,
            max_pages_per_request=scfg.max_pages_per_request,
        )
        self._next_rid = 0
        self._ft = FinetuneCursor()
        self.steps = 0

    # -- requests -------------------------------------------------------------------------
    @property
    def trainable_index(self) -> int:
        return self.scfg.max_adapters

    def submit(
        self,
        prompt: Sequence[int],
        *,
        max_new_tokens: int,
        adapter: str | None = None,
        temperature: float = 0.0,
        eos_id: int | None = None,
    ) -> int:
        """Queues an inference request; returns its id.

        Args:
            prompt: token ids (non-empty).
            max_new_tokens: tokens to generate (>= 1).
            adapter: a bank adapter name, `TRAINABLE`, or None for the base model.
            temperature: 0 for greedy decoding.
            eos_id: stop early when this token is sampled.

        Raises:
            ConfigError: empty prompt, ids outside the vocabulary, a request longer than a
                slot's pages hold, or an unknown adapter.
        """
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ConfigError("prompt", prompt, "is empty", "pass at least one token (BOS)")
        bad = [t for t in prompt if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise ConfigError(
                "prompt", bad[:3], f"ids outside [0, {self.cfg.vocab_size})", "re-tokenize"
            )
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        check_number("temperature", temperature, minimum=0.0)
        total = len(prompt) + max_new_tokens
        if total > self.scfg.max_request_len:
            raise ConfigError(
                "prompt + max_new_tokens",
                total,
                f"exceeds the {self.scfg.max_request_len} tokens a slot holds (page_size * "
                "max_pages_per_request)",
                "shorten the request or raise CoServeConfig.max_pages_per_request",
            )
        pool = self.scfg.num_pages * self.scfg.page_size
        if total > pool:
            raise ConfigError(
                "prompt + max_new_tokens",
                total,
                f"exceeds the {pool} tokens the whole KV pool holds (num_pages * page_size)",
                "shorten the request or raise CoServeConfig.num_pages",
            )
        idx = self.trainable_index if adapter == TRAINABLE else self.bank_index(adapter)
        rid = self._next_rid
        self._next_rid += 1
        req = Request(rid, prompt, len(prompt), max_new_tokens, idx, temperature, eos_id)
        self._table.queue.append(req)
        return rid

    def result(self, rid: int) -> list[int]:
        """Generated tokens of a finished request."""
        return self._table.results[rid]

    # -- finetuning -----------------------------------------------------------------------
    def add_finetuning(self, samples: Sequence[Sequence[int]], *, epochs: int = 1) -> None:
        """Queues finetuning samples (token id lists, trained in order, ``epochs`` times).

        Raises:
            ConfigError: a sample shorter than 2 tokens or longer than ``ft_max_len``.
        """
        check_int("epochs", epochs, minimum=1)
        S = self.scfg.ft_max_len
        clean = []
        for i, s in enumerate(samples):
            s = [int(t) for t in s]
            if not 2 <= len(s) <= S:
                raise ConfigError(
                    f"finetuning sample {i} length",
                    len(s),
                    f"must be between 2 and ft_max_len={S}",
                    "truncate the sample or raise CoServeConfig.ft_max_len",
                )
            if any(not 0 <= t < self.cfg.vocab_size for t in s):
                raise ConfigError(f"finetuning sample {i}", s[:5], "has bad ids", "re-tokenize")
            clean.append(s)
        for _ in range(epochs):
            self._ft.samples.extend(clean)

    @property
    def losses(self) -> list[float]:
        """Loss of every finetuning sample completed, in order."""
        return self._ft.losses

    @property
    def samples_done(self) -> int:
        """Finetuning samples completed (forward and backward)."""
        return self._ft.samples_done

    @property
    def idle(self) -> bool:
        """No request queued or running and no finetuning work left."""
        return not (self._table or self._ft.busy)

    def trainable_adapter(self) -> dict[str, dict[str, jax.Array]]:
        """The current trainable adapter weights (save with `save_peft`)."""
        return jax.tree.map(jnp.copy, self.state.lora)

    # -- the step -------------------------------------------------------------------------
    def step(self, *, ft_budget: int | None = None, allow_backward: bool = True) -> StepReport:
        """Runs one co-serving step (see the module docstring).

        Args:
            ft_budget: cap on finetuning forward tokens this step (the SLO controller's
                budget); None: ``ft_tokens_per_step``. The leftover token budget caps it too.
            allow_backward: a finetuning backward step may run this step.
        """
        ft = self._ft
        ft.load()
        p = self._table.plan(
            token_budget=self.scfg.token_budget,
            page_size=self.scfg.page_size,
            ft_fwd_left=ft.fwd_left,
            ft_active=ft.sample is not None,
            ft_budget=self.ft_tokens_per_step if ft_budget is None else ft_budget,
            allow_backward=allow_backward,
        )
        self._table.apply(p)
        if p.preempted:
            log.info("KV pressure: preempted requests %s (recomputed later)", p.preempted)
        b, sample_rows = self._batch(p)
        bwd = None
        if p.backward:
            assert ft.sample is not None, "a backward without a finetuning sample (a bug)"
            bwd = ft.backward(b, backward_steps(self.cfg, self.scfg, len(ft.sample)))
        self.state, out = self._step(
            self.params, self._bank.weights, self._bank.scales, self.state, StepBatch(**b)
        )
        next_tokens = np.asarray(out.next_tokens)
        self.steps += 1
        new, finished = self._table.finish_step(
            p, {rid: int(next_tokens[row]) for rid, row in sample_rows.items()}
        )
        sample_loss = None
        if bwd is not None:
            sample_loss = ft.backward_done(float(out.sample_loss) if bwd == 0 else float("nan"))
            if sample_loss is not None:
                log.info("finetuning sample %d loss %.4f", ft.samples_done, sample_loss)
        return StepReport(
            new_tokens=new,
            finished=tuple(finished),
            decode_tokens=p.decode_tokens,
            prefill_tokens=p.prefill_tokens,
            ft_forward_tokens=p.ft_tokens,
            bwd_chunk=bwd,
            sample_loss=sample_loss,
            updated=bool(out.updated),
            preempted=p.preempted,
        )

    def _batch(self, p: StepPlan) -> tuple[dict[str, Any], dict[int, int]]:
        """The numpy `StepBatch` fields of a plan, and each sampling request's row."""
        b = empty_batch(self.scfg)
        running = self._table.running
        sample_rows: dict[int, int] = {}
        n = 0
        for row in p.rows:
            req = running[row.rid]
            s = slice(n, n + row.count)
            b["tokens"][s] = req.tokens[row.start : row.start + row.count]
            b["positions"][s] = np.arange(row.start, row.start + row.count)
            b["slots"][s] = req.slot
            b["adapters"][s] = req.adapter
            b["temperature"][s] = req.temperature
            n += row.count
            if row.samples:  # the last prompt token's (or the decode token's) output
                sample_rows[row.rid] = n - 1
        self._ft.fill(b, n, p.ft_tokens, self.trainable_index)
        b["page_table"] = self._table.page_table.copy()
        return b, sample_rows

    def run(self, *, max_steps: int = 100_000) -> list[StepReport]:
        """Steps until idle (or ``max_steps``); returns the reports."""
        reports: list[StepReport] = []
        while not self.idle and len(reports) < max_steps:
            reports.append(self.step())
        return reports

    def generate(
        self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, adapter: str | None = None
    ) -> list[list[int]]:
        """Greedy generation for several prompts (co-served with any queued finetuning)."""
        rids = [self.submit(p, max_new_tokens=max_new_tokens, adapter=adapter) for p in prompts]
        results = self._table.results
        while any(r not in results for r in rids):
            self.step()
        return [results[r] for r in rids]

    # -- checkpoints ----------------------------------------------------------------------
    def save_finetuning(self, directory: str | Path) -> Path:
        """Checkpoints the finetuning job with Orbax: adapter, optimizer state (including
        gradients accumulated towards the next update), counters, losses and the samples still
        queued. Call it between samples (e.g. after a `StepReport` with ``sample_loss``). Give
        each job its own folder.

        Raises:
            ConfigError: a sample is in flight (its buffers are not checkpointed), or the
                folder already holds this or a later step (another job's folder).
        """
        if self._ft.sample is not None:
            raise ConfigError(
                "save_finetuning",
                f"sample cursor {self._ft.fwd_done}",
                "a finetuning sample is in flight",
                "save after the step that reports the sample's loss (StepReport.sample_loss)",
            )
        tree = self._ckpt_tree()
        host = {**self._ft.state(), "engine": self._describe(tree)}
        return _ft_checkpoint.save(directory, self.samples_done, tree, host)

    def restore_finetuning(self, directory: str | Path) -> int:
        """Resumes the finetuning job of the latest checkpoint in ``directory`` (requests and
        the KV cache are untouched). Returns the number of samples already done.

        Raises:
            ConfigError: no checkpoint there; a missing, truncated or malformed file (named);
                an engine whose model, LoRA config, ``grad_accum`` or optimizer state differ
                from the saved job's.
        """
        tree = self._ckpt_tree()
        restored, host = _ft_checkpoint.restore(directory, tree, self._describe(tree))
        self.state = dataclasses.replace(self.state, **restored)
        self._ft.load_state(host)
        return self.samples_done

    def _describe(self, tree: dict[str, Any]) -> dict[str, Any]:
        return _ft_checkpoint.describe(self.cfg, self.lora_cfg, self.scfg.grad_accum, tree)

    def _ckpt_tree(self) -> dict[str, Any]:
        st = self.state
        return {
            "lora": st.lora,
            "opt_state": st.opt_state,
            "samples_done": st.samples_done,
            "updates_done": st.updates_done,
            "loss_acc": st.loss_acc,
        }

    # -- the adapter bank -----------------------------------------------------------------
    @property
    def bank(self) -> AdapterBank:
        """The inference adapters now in the bank (free slots are named "")."""
        return self._bank.bank()

    def bank_index(self, name: str | None) -> int:
        """Adapter index of a bank adapter (`BASE` for None).

        Raises:
            ConfigError: the name is not loaded.
        """
        return self._bank.index(name)

    def set_bank_adapter(
        self, name: str, lora_cfg: LoraConfig, lora: dict[str, dict[str, jax.Array]]
    ) -> int:
        """Writes an inference adapter into the bank slot named ``name`` (replacing it) or into
        a free slot; returns the slot. Shapes stay fixed (zero-padded to the bank's rank and
        targets), so the step is not recompiled. Requests already using the slot see the new
        weights from the next step on (give versions new names for an atomic swap).

        Raises:
            ConfigError: the bank is full, the rank exceeds the bank's, a target is not in the
                bank, or the weights do not fit the model.
        """
        return self._bank.set(name, lora_cfg, lora)

    def remove_bank_adapter(self, name: str) -> None:
        """Frees an adapter's bank slot (zeroed; no recompilation).

        Raises:
            ConfigError: the adapter is not loaded, or a queued or running request uses it.
        """
        slot = self._bank.index(name)
        users = [r.rid for r in self._table.requests() if r.adapter == slot]
        if users:
            raise ConfigError(
                "remove_bank_adapter", name, f"is used by requests {users}", "let them finish"
            )
        self._bank.remove(name)

    # -- serving hooks (a server's request and job lifecycle) -----------------------------
    def abort(self, rid: int) -> bool:
        """Drops request ``rid`` between steps: a queued one leaves the queue, a running one
        frees its slot and KV pages at once (for stop strings and disconnected clients), a
        finished one's result is forgotten. Returns whether the id was known."""
        return self._table.abort(rid)

    def pop_result(self, rid: int) -> list[int] | None:
        """Returns and forgets the generated tokens of a finished request (None when it has not
        finished or was forgotten); a long-running server calls it so results do not pile up."""
        return self._table.results.pop(rid, None)

    def stats(self) -> EngineStats:
        """A snapshot of queue length, running requests, free KV pages and slots, steps and
        finetuning progress (read-only; cheap enough to call after every step)."""
        t, ft = self._table, self._ft
        return EngineStats(
            waiting=len(t.queue),
            running=len(t.running),
            free_pages=t.pages.n_free,
            num_pages=t.pages.total,
            free_slots=t.slots.n_free,
            steps=self.steps,
            ft_samples_left=len(ft.samples) + (ft.sample is not None),
            ft_samples_done=ft.samples_done,
        )

    def cancel_finetuning(self) -> int:
        """Drops the queued finetuning samples and the one in flight (its partial gradient is
        discarded: the next sample's backward starts from zero); the trainable adapter, the
        optimizer state and the inference requests are kept. Takes effect at the next step.
        Returns the number of samples dropped."""
        ft = self._ft
        dropped = len(ft.samples) + (ft.sample is not None)
        ft.samples.clear()
        ft.sample, ft.bwd, ft.fwd_done, ft.bwd_first = None, None, 0, False
        return dropped

    def reset_finetuning(self, *, lora: dict[str, dict[str, jax.Array]]) -> None:
        """Starts finetuning afresh from ``lora`` without touching inference: drops the queued
        and in-flight samples (`cancel_finetuning`), zeroes the gradient, re-initializes the
        optimizer state and clears `losses` and `samples_done`. Queued and running requests,
        the KV cache and the bank are kept (unlike `reset`), and the step is not recompiled.
        Requests on `TRAINABLE` see ``lora`` from the next step on.

        Raises:
            ConfigError: ``lora`` has other targets or shapes than the trainable adapter.
        """
        cur = self.state.lora
        if set(lora) != set(cur):
            raise ConfigError(
                "lora targets", sorted(lora), f"!= LoraConfig.targets={self.lora_cfg.targets}",
                "pass an adapter with the configured targets",
            )  # fmt: skip
        for t, ab in cur.items():
            for k in ("A", "B"):
                got = tuple(np.shape(lora[t][k]))
                if got != tuple(ab[k].shape):
                    raise ConfigError(
                        f"lora[{t!r}][{k!r}] shape", got, f"!= the trainable adapter's "
                        f"{tuple(ab[k].shape)}", "build it with this engine's LoraConfig and model",
                    )  # fmt: skip
        self.cancel_finetuning()
        f32 = jnp.float32
        lora = jax.tree.map(lambda a, c: jnp.asarray(a, c.dtype), lora, cur)
        self.state = dataclasses.replace(
            self.state,
            lora=jax.tree.map(jnp.copy, lora),  # the state is donated; never alias the caller's
            grad=jax.tree.map(lambda a: jnp.zeros(a.shape, f32), lora),
            opt_state=multi_steps(self._optimizer, self.scfg).init(lora),
            loss_acc=jnp.zeros((), f32),
            samples_done=jnp.zeros((), jnp.int32),
            updates_done=jnp.zeros((), jnp.int32),
        )
        if self.mesh is not None:
            self.state = shard_tree(self.state, self._state_specs, self.mesh)
        self._ft = FinetuneCursor()
