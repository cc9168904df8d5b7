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

With a budget policy (``policy=``, `jgraph.coserve.slo`), step 1 first asks it for this step's
`FinetuneBudget`: the scheduler's inference rows are planned once without finetuning, the
policy sees their count, how long the oldest request still waiting for its first token has
waited (arrival = `submit` time on the engine's monotonic ``clock``) and whether a backward
step is pending, and its answer caps finetuning forward tokens, the backward and the
inference rows of the real plan. After the step the policy observes the measured wall time
of the whole step (planning to the fetched device result) and what ran.

A preempted request keeps the tokens it generated; its prompt and those tokens are prefilled
again when it is re-admitted, so greedy outputs do not depend on preemption.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jgraph.core import ConfigError, check_int
from jgraph.coserve._backward import backward_steps
from jgraph.coserve._bank import BankSlots
from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._controller import BudgetPolicy, FinetuneBudget
from jgraph.coserve._cost import StepCostModel
from jgraph.coserve._engine_finetune import FinetuneMixin
from jgraph.coserve._ft_jobs import DEFAULT_JOB, FinetuneJob, FinetuneJobs
from jgraph.coserve._lora import AdapterBank, init_lora
from jgraph.coserve._parallel import shard_tree
from jgraph.coserve._profile import profile_engine_step
from jgraph.coserve._report import StepReport
from jgraph.coserve._requests import EngineStats, Request, RequestTable
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
)

__all__ = ["TRAINABLE", "CoServeEngine", "StepReport"]

log = logging.getLogger(__name__)

TRAINABLE = "trainable"
"""Adapter name that makes an inference request use the adapter being finetuned."""


class CoServeEngine(FinetuneMixin):
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
        policy: finetuning budget policy consulted every step (`jgraph.coserve.slo`:
            `make_policy` / `BudgetController`); None: ``ft_tokens_per_step`` every step.
        clock: monotonic seconds, for request arrival times and step wall times (injectable
            for tests).

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
        policy: BudgetPolicy | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.cfg, self.scfg, self.lora_cfg = cfg, scfg, lora_cfg
        check_params(cfg, params)  # before any tracing: a bad leaf would fail inside lax.scan
        if lora is not None:
            check_adapter(cfg, lora_cfg, lora)
        self.policy: BudgetPolicy | None = None
        self.set_policy(policy)
        self._clock = clock
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
        """Drops all requests and finetuning work (jobs other than the default one too) and
        starts the default job from ``lora``; keeps the compiled step (so tests and servers do
        not pay compilation again). ``key`` seeds the sampled requests submitted without a seed.

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
        self._jobs = FinetuneJobs(
            FinetuneJob(name=DEFAULT_JOB, grad_accum=scfg.grad_accum, lr_multiplier=1.0)
        )
        self._job_key = jax.random.fold_in(key, 1)
        self._arrivals: dict[int, float] = {}  # rid -> submit time, until its first token
        self.steps = 0

    def set_policy(self, policy: BudgetPolicy | None) -> None:
        """Sets (or, with None, removes) the finetuning budget policy consulted every step.

        Raises:
            ConfigError: the policy plans for another token budget than the engine's.
        """
        if policy is not None and policy.token_budget != self.scfg.token_budget:
            raise ConfigError(
                "policy.token_budget",
                policy.token_budget,
                f"!= CoServeConfig.token_budget={self.scfg.token_budget}",
                "build the policy with the engine's token_budget",
            )
        self.policy = policy

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
        self._arrivals[rid] = self._clock()
        return rid

    def oldest_wait_s(self) -> float:
        """Seconds the oldest request without a first token has waited since `submit`
        (0 when none waits); a preempted request that already produced tokens does not
        count."""
        now, waits = self._clock(), [0.0]
        for r in self._table.requests():
            t = self._arrivals.get(r.rid)
            if t is not None and not r.generated:
                waits.append(now - t)
        return max(waits)

    def result(self, rid: int) -> list[int]:
        """Generated tokens of a finished request."""
        return self._table.results[rid]

    @property
    def idle(self) -> bool:
        """No request queued or running and no finetuning work left."""
        return not (self._table or self._jobs.busy)

    # -- the step -------------------------------------------------------------------------
    def step(self, *, ft_budget: int | None = None, allow_backward: bool = True) -> StepReport:
        """Runs one co-serving step (see the module docstring).

        Args:
            ft_budget: cap on finetuning forward tokens this step; None:
                ``ft_tokens_per_step``. The leftover token budget caps it too, and so does the
                policy's budget when a policy is set.
            allow_backward: a finetuning backward step may run this step (with a policy:
                only if the policy allows it too).
        """
        t0 = self._clock()
        if self._ft.sample is None:  # between samples: the jobs take turns
            self._activate(self._jobs.pick())
        job = self._jobs.current
        ft = job.cursor
        ft.load()
        ft_cap = self.ft_tokens_per_step if ft_budget is None else ft_budget
        decision, inference_cap = None, None
        if self.policy is not None:
            decision = self._ask_policy()
            ft_cap = min(ft_cap, decision.ft_tokens)
            allow_backward = allow_backward and decision.allow_backward
            inference_cap = decision.inference_cap
        p = self._table.plan(
            token_budget=self.scfg.token_budget,
            page_size=self.scfg.page_size,
            ft_fwd_left=ft.fwd_left,
            ft_active=ft.sample is not None,
            ft_budget=ft_cap,
            allow_backward=allow_backward,
            inference_cap=inference_cap,
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
        job.forward_tokens += p.ft_tokens
        job.updates += int(bool(out.updated))
        new, finished = self._table.finish_step(
            p, {rid: int(next_tokens[row]) for rid, row in sample_rows.items()}
        )
        for rid in new:
            self._arrivals.pop(rid, None)
        sample_loss = None
        if bwd is not None:
            sample_loss = ft.backward_done(float(out.sample_loss) if bwd == 0 else float("nan"))
            if sample_loss is not None:
                log.info("finetuning sample %d loss %.4f", ft.samples_done, sample_loss)
        step_s = self._clock() - t0
        if self.policy is not None:
            self.policy.observe(
                step_s,
                inference_tokens=p.decode_tokens + p.prefill_tokens,
                ft_tokens=p.ft_tokens,
                backward=p.backward,
            )
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
            ft_job=job.name if (p.ft_tokens or bwd is not None) else None,
            step_s=step_s,
            budget=decision,
        )

    def _ask_policy(self) -> FinetuneBudget:
        """The policy's budget for the current state (see the module docstring)."""
        assert self.policy is not None
        ft = self._ft
        # Inference is planned first and does not depend on finetuning: plan it alone.
        dry = self._table.plan(token_budget=self.scfg.token_budget, page_size=self.scfg.page_size)
        return self.policy.budget(
            dry.decode_tokens + dry.prefill_tokens,
            self.oldest_wait_s(),
            backward_pending=ft.sample is not None and ft.fwd_left == 0,
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

    def profile_cost_model(
        self,
        *,
        cache_dir: str | Path | None = None,
        grid: Sequence[tuple[int, int, bool]] | None = None,
        repeats: int = 3,
        warmup: int = 1,
    ) -> StepCostModel:
        """Fits the SLO controller's step-time model by timing this engine's compiled step on
        synthetic batches of each token mix, on a copy of the state (requests, KV cache and
        the finetuning job are untouched; no recompilation). Cached in ``cache_dir`` per
        backend, device kind, configs and grid (`jgraph.coserve.slo.load_or_profile`).

        Args:
            cache_dir: folder of cached fits (None: always profile, cache nothing).
            grid: (inference tokens, finetuning tokens, backward) mixes (default:
                `jgraph.coserve.slo.default_profile_grid` of the token budget).
            repeats: timed steps per mix (the median is fitted).
            warmup: untimed steps per mix first.

        Then: ``eng.set_policy(make_policy("coserve", token_budget=..., slo=...,
        cost_model=model))``.
        """
        return profile_engine_step(
            step=self._step,
            params=self.params,
            bank=(self._bank.weights, self._bank.scales),
            state=self.state,
            cfg=self.cfg,
            scfg=self.scfg,
            lora_cfg=self.lora_cfg,
            trainable_index=self.trainable_index,
            clock=self._clock,
            cache_dir=cache_dir,
            grid=grid,
            repeats=repeats,
            warmup=warmup,
            extra_key={"mesh": None if self.mesh is None else dict(self.mesh.shape)},
        )

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
        finetuning progress over all jobs (read-only; cheap enough to call after every
        step)."""
        t = self._table
        cursors = [self._jobs.get(n).cursor for n in self._jobs]
        return EngineStats(
            waiting=len(t.queue),
            running=len(t.running),
            free_pages=t.pages.n_free,
            num_pages=t.pages.total,
            free_slots=t.slots.n_free,
            steps=self.steps,
            ft_samples_left=sum(len(c.samples) + (c.sample is not None) for c in cursors),
            ft_samples_done=sum(c.samples_done for c in cursors),
        )
