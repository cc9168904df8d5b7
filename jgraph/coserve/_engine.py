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

from jgraph.core import ConfigError, check_int
from jgraph.coserve import _ft_checkpoint
from jgraph.coserve._backward import backward_steps
from jgraph.coserve._bank import BankSlots
from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._finetune import FinetuneCursor
from jgraph.coserve._lora import AdapterBank, init_lora
from jgraph.coserve._parallel import shard_tree
from jgraph.coserve._requests import Request, RequestTable
from jgraph.coserve._sampling import SamplingParams, seed_key
from jgraph.coserve._scheduler import StepPlan
from jgraph.coserve._step import (
    StepBatch,
    coserve_specs,
    empty_batch,
    init_state,
    make_coserve_step,
)
from jgraph.coserve._validate import (
    check_adapter,
    check_params,
    check_prompt,
    check_token_samples,
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
        key: PRNG key (adapter init when ``lora`` is None, and the seeds of sampled requests
            submitted without one).
        bank: inference adapters (capacity ``scfg.max_adapters``); None for none.
        lora: initial trainable adapter (default: `init_lora`, B = 0).
        ft_tokens_per_step: cap on finetuning forward tokens per step (default: no cap beyond
            the leftover token budget).
        mesh: optional mesh with a ``MODEL`` axis: the step runs tensor-parallel
            (`make_coserve_step`), params, bank and state are placed with `coserve_specs`.

    Raises:
        ConfigError: ``params`` or ``lora`` do not fit ``cfg``/``lora_cfg`` (the message names
            the leaf; `jgraph.coserve.validate`), or the bank's capacity is not
            ``scfg.max_adapters``.

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
        check_params(cfg, params)  # before any tracing: a bad leaf would fail inside lax.scan
        if lora is not None:
            check_adapter(cfg, lora_cfg, lora)
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
        step (so tests and servers do not pay compilation again). ``key`` seeds the sampled
        requests submitted without a seed.

        Raises:
            ConfigError: ``lora`` does not fit the model or ``LoraConfig`` (targets, shapes, or
                a rank other than ``LoraConfig.rank``, which would be scaled by the wrong
                ``alpha / rank``).
        """
        check_adapter(self.cfg, self.lora_cfg, lora)
        scfg = self.scfg
        self.state = init_state(self.cfg, scfg, lora, self._optimizer)
        if self.mesh is not None:
            self.state = shard_tree(self.state, self._state_specs, self.mesh)
        self._table = RequestTable(
            max_requests=scfg.max_requests,
            num_pages=scfg.num_pages,
            max_pages_per_request=scfg.max_pages_per_request,
        )
        self._next_rid = 0
        data = (
            key if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.key_data(key)
        )
        # Unseeded sampled requests draw their seeds from here, in submission order.
        self._seeds = np.random.default_rng(np.asarray(data).astype(np.uint64).ravel().tolist())
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
        max_new_tokens: int | None = None,
        adapter: str | None = None,
        temperature: float = 0.0,
        eos_id: int | None = None,
        top_p: float = 1.0,
        seed: int | None = None,
        sampling: SamplingParams | None = None,
    ) -> int:
        """Queues an inference request; returns its id.

        Token ``i`` of a sampled request is drawn with the key ``fold_in(seed_key(seed), i)``
        (`jgraph.coserve.sampling.request_key`), so a seeded request gets the same tokens
        whatever else runs, whichever batch row it lands in and whether or not it is preempted.

        Args:
            prompt: token ids (non-empty).
            max_new_tokens: tokens to generate (>= 1); may be left out with ``sampling``
                (then ``sampling.max_tokens``).
            adapter: a bank adapter name, `TRAINABLE`, or None for the base model.
            temperature: 0 for greedy decoding (exactly ``argmax``).
            eos_id: stop early when this token is sampled.
            top_p: nucleus-sampling mass, in (0, 1].
            seed: makes sampling reproducible; None draws a seed from the engine's key (in
                submission order, so a reset engine given the same key repeats itself).
            sampling: the request's `SamplingParams` instead of ``temperature``/``top_p``/
                ``seed`` (its ``stop`` strings are text: the caller that detokenizes applies
                them, e.g. with `StopMatcher`).

        Raises:
            ConfigError: an empty prompt, ids that are not integers in the vocabulary, bad
                sampling parameters, both ``sampling`` and one of the fields it replaces, a
                request longer than a slot's pages hold, or an unknown adapter.
        """
        prompt = check_prompt(prompt, vocab_size=self.cfg.vocab_size)
        if sampling is None:
            if max_new_tokens is None:
                raise ConfigError(
                    "max_new_tokens", None, "is required", "pass max_new_tokens= or sampling="
                )
            check_int("max_new_tokens", max_new_tokens, minimum=1)
            sampling = SamplingParams(
                temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed
            )
        else:
            if (temperature, top_p, seed) != (0.0, 1.0, None) or max_new_tokens not in (
                None,
                sampling.max_tokens,
            ):
                raise ConfigError(
                    "sampling",
                    sampling,
                    "given together with temperature/top_p/seed/max_new_tokens",
                    "pass the sampling parameters one way only",
                )
            max_new_tokens = sampling.max_tokens
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
        key_data = None
        if not sampling.greedy:
            s = sampling.seed if sampling.seed is not None else int(self._seeds.integers(2**63))
            key_data = np.asarray(jax.random.key_data(seed_key(s)), np.uint32)
        req = Request(rid, prompt, len(prompt), max_new_tokens, idx, sampling.temperature, eos_id,
                      top_p=sampling.top_p, key_data=key_data)  # fmt: skip
        self._table.queue.append(req)
        return rid

    def result(self, rid: int) -> list[int]:
        """Generated tokens of a finished request."""
        return self._table.results[rid]

    # -- finetuning -----------------------------------------------------------------------
    def add_finetuning(self, samples: Sequence[Sequence[int]], *, epochs: int = 1) -> None:
        """Queues finetuning samples (token id lists, trained in order, ``epochs`` times).

        Raises:
            ConfigError: a sample shorter than 2 tokens or longer than ``ft_max_len``, ids
                outside the vocabulary, float ids (refused, not truncated), text, or one flat
                list of ids instead of a list of samples (`check_token_samples`).
        """
        check_int("epochs", epochs, minimum=1)
        clean = check_token_samples(
            samples,
            vocab_size=self.cfg.vocab_size,
            min_len=2,
            max_len=self.scfg.ft_max_len,
            field="finetuning samples",
        )
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
            b["top_p"][s] = req.top_p
            if req.key_data is not None:
                b["rng_key"][s] = req.key_data
            # The index among the request's generated tokens of the token its last row samples.
            b["sample_index"][s] = len(req.tokens) - req.prompt_len
            # Dynamic-NTK RoPE as transformers' cached generation: the prompt rotated for its
            # whole length, each later token for its own position + 1 (so chunked prefill and
            # recompute after preemption rotate every token the same way).
            b["rope_len"][s] = np.maximum(req.prompt_len, b["positions"][s] + 1)
            n += row.count
            if row.samples:  # the last prompt token's (or the decode token's) output
                sample_rows[row.rid] = n - 1
        self._ft.fill(b, n, p.ft_tokens, self.trainable_index)
        if p.ft_tokens:  # a finetuning sample is rotated for its full length (forward and bwd)
            assert self._ft.sample is not None, "finetuning rows without a sample (a bug)"
            b["rope_len"][n : n + p.ft_tokens] = len(self._ft.sample)
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
