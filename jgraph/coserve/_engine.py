"""Host side of the co-serving engine: requests, KV pages, the finetuning cursor, and the batch
each step runs.

Data flow: the caller `submit`s inference requests and `add_finetuning` samples, then calls
`step()` repeatedly. Each `step()`:

1. builds a `StepBatch` (numpy) by FlexLLM's rule (spec §a.3): one decode token for every
   running request that is generating, then chunked prefill of running and newly admitted
   requests (FCFS, admitted while a slot and enough free KV pages exist) within the token
   budget, then the leftover budget (capped by ``ft_tokens_per_step``) for forward tokens of the
   current finetuning sample; when that sample's forward is complete, one backward step per
   step (a token chunk, last chunk first, or a group of layers, top group first:
   ``CoServeConfig.backward_mode``);
2. calls the jitted, state-donating step from `make_coserve_step` once (no recompilation: all
   shapes are fixed by `CoServeConfig`);
3. appends sampled tokens, retires finished requests (freeing slot and pages) and advances the
   finetuning cursors; returns a `StepReport`.

Pages for the whole request (prompt + max_new_tokens) are reserved at admission, so a running
request never needs eviction; a request that does not fit waits in the queue. The request
manager and SLO controller of the next issue replace this loop's policy (eviction, budgets)
and keep the device step as it is.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jgraph.core import ConfigError, atomic_write_json, check_int, check_number
from jgraph.coserve._backward import backward_steps
from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._lora import BASE, AdapterBank, init_lora
from jgraph.coserve._paged import INVALID
from jgraph.coserve._parallel import shard_tree
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


@dataclasses.dataclass
class _Request:
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

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]


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
    """

    new_tokens: dict[int, int]
    finished: tuple[int, ...]
    decode_tokens: int
    prefill_tokens: int
    ft_forward_tokens: int
    bwd_chunk: int | None
    sample_loss: float | None
    updated: bool


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
        self.bank = bank
        if lora is None:
            lora = init_lora(cfg, lora_cfg, key=k_init)
        self.ft_tokens_per_step = (
            scfg.token_budget
            if ft_tokens_per_step is None
            else check_int("ft_tokens_per_step", ft_tokens_per_step, minimum=0)
        )
        self._optimizer = optimizer
        self.mesh = mesh
        targets = tuple(bank.weights)
        self._step = make_coserve_step(
            cfg, scfg, lora_cfg, optimizer, mesh=mesh, bank_targets=targets
        )
        self._bank_w = bank.weights
        self._state_specs = None
        if mesh is not None:
            ps, bs, self._state_specs = coserve_specs(cfg, scfg, lora_cfg, optimizer, mesh, targets)
            self.params = shard_tree(params, ps, mesh)
            self._bank_w = shard_tree(bank.weights, bs, mesh)
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
        self._free_pages = list(range(scfg.num_pages))
        self._free_slots = list(range(scfg.max_requests))
        self._page_table = np.full(
            (scfg.max_requests, scfg.max_pages_per_request), INVALID, np.int32
        )
        self._queue: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []
        self._results: dict[int, list[int]] = {}
        self._next_rid = 0
        self._samples: collections.deque[list[int]] = collections.deque()
        self._ft: list[int] | None = None  # current sample
        self._ft_cursor = 0
        self._bwd_chunk: int | None = None
        self._bwd_first = False
        self.losses: list[float] = []
        self.samples_done = 0
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
        idx = self.trainable_index if adapter == TRAINABLE else self.bank.index(adapter)
        rid = self._next_rid
        self._next_rid += 1
        req = _Request(rid, prompt, len(prompt), max_new_tokens, idx, temperature, eos_id)
        self._queue.append(req)
        return rid

    def result(self, rid: int) -> list[int]:
        """Generated tokens of a finished request."""
        return self._results[rid]

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
            self._samples.extend(clean)

    @property
    def idle(self) -> bool:
        """No request queued or running and no finetuning work left."""
        return not (self._queue or self._running or self._samples or self._ft is not None)

    def trainable_adapter(self) -> dict[str, dict[str, jax.Array]]:
        """The current trainable adapter weights (save with `save_peft`)."""
        return jax.tree.map(jnp.copy, self.state.lora)

    # -- the step -------------------------------------------------------------------------
    def _admit(self) -> None:
        P = self.scfg.page_size
        while self._queue and self._free_slots:
            req = self._queue[0]
            need = math.ceil((req.prompt_len + req.max_new) / P)
            if need > len(self._free_pages):
                break  # FCFS: later requests wait behind the head of the queue
            self._queue.popleft()
            req.slot = self._free_slots.pop(0)
            req.pages = [self._free_pages.pop(0) for _ in range(need)]
            self._page_table[req.slot] = INVALID
            self._page_table[req.slot, :need] = req.pages
            self._running.append(req)

    def _build(
        self,
    ) -> tuple[dict[str, Any], list[tuple[_Request, int, int]], dict[str, int]]:
        b = empty_batch(self.scfg)
        B = self.scfg.token_budget
        rows: list[tuple[_Request, int, int]] = []  # (request, rows placed, sampling row)
        n = 0
        counts = {"decode": 0, "prefill": 0, "ft": 0}

        def put(req: _Request, count: int) -> None:
            nonlocal n
            s = slice(n, n + count)
            b["tokens"][s] = req.tokens[req.cached : req.cached + count]
            b["positions"][s] = np.arange(req.cached, req.cached + count)
            b["slots"][s] = req.slot
            b["adapters"][s] = req.adapter
            b["temperature"][s] = req.temperature
            n += count
            # The last prompt token's (or the decode token's) output is the next token.
            rows.append((req, count, n - 1 if req.cached + count == len(req.tokens) else INVALID))

        # Decodes first (1 token each), then chunked prefill, FCFS (spec §a.3 steps 2-3).
        decoding = [r for r in self._running if 0 < r.cached == len(r.tokens) - 1]
        for r in decoding[:B]:
            put(r, 1)
            counts["decode"] += 1
        self._admit()
        for r in self._running:
            if n >= B:
                break
            if r in decoding:
                continue
            c = min(len(r.tokens) - r.cached, B - n)
            put(r, c)
            counts["prefill"] += c
        if self._ft is None and self._samples and self._bwd_chunk is None:
            self._ft, self._ft_cursor = self._samples.popleft(), 0
        if self._ft is not None and self._bwd_chunk is None:
            m = min(len(self._ft) - self._ft_cursor, B - n, self.ft_tokens_per_step)
            if m > 0:
                c0, s = self._ft_cursor, slice(n, n + m)
                sample = np.asarray(self._ft, np.int32)
                b["tokens"][s] = sample[c0 : c0 + m]
                b["positions"][s] = np.arange(c0, c0 + m)
                b["is_ft"][s] = True
                b["adapters"][s] = self.trainable_index
                nxt = np.arange(c0 + 1, c0 + m + 1)
                nxt_tok = sample[np.minimum(nxt, len(sample) - 1)]
                b["labels"][s] = np.where(nxt < len(sample), nxt_tok, INVALID)
                n += m
                counts["ft"] = m
            b["loss_scale"] = np.float32(1.0 / (len(self._ft) - 1))
        b["page_table"] = self._page_table.copy()
        return b, rows, counts

    def step(self) -> StepReport:
        """Runs one co-serving step (see the module docstring)."""
        b, rows, counts = self._build()
        ft_fwd = counts["ft"]
        if self._ft is not None:
            self._ft_cursor += ft_fwd
            if self._bwd_chunk is None and self._ft_cursor >= len(self._ft):
                # Forward complete: the backward may start in this same step, since the step
                # runs its backward on the buffers its forward just wrote.
                self._bwd_chunk = backward_steps(self.cfg, self.scfg, len(self._ft)) - 1
                self._bwd_first = True
        bwd = self._bwd_chunk
        if bwd is not None:
            assert self._ft is not None, "a backward chunk without a finetuning sample (a bug)"
            b["bwd_chunk"] = np.int32(bwd)
            b["bwd_len"] = np.int32(len(self._ft))
            b["bwd_first"] = np.bool_(self._bwd_first)
            b["bwd_last"] = np.bool_(bwd == 0)
        self.state, out = self._step(
            self.params, self._bank_w, self.bank.scales, self.state, StepBatch(**b)
        )
        next_tokens = np.asarray(out.next_tokens)
        self.steps += 1
        new: dict[int, int] = {}
        finished = []
        for req, count, row in rows:
            req.cached += count
            if row == INVALID:
                continue
            tok = int(next_tokens[row])
            req.tokens.append(tok)
            new[req.rid] = tok
            if len(req.generated) >= req.max_new or tok == req.eos_id:
                finished.append(req.rid)
                self._retire(req)
        sample_loss = None
        if bwd is not None:
            self._bwd_first = False
            if bwd == 0:
                sample_loss = float(out.sample_loss)
                self.losses.append(sample_loss)
                self.samples_done += 1
                self._ft, self._bwd_chunk = None, None
                log.info("finetuning sample %d loss %.4f", self.samples_done, sample_loss)
            else:
                self._bwd_chunk = bwd - 1
        return StepReport(
            new_tokens=new,
            finished=tuple(finished),
            decode_tokens=counts["decode"],
            prefill_tokens=counts["prefill"],
            ft_forward_tokens=ft_fwd,
            bwd_chunk=bwd,
            sample_loss=sample_loss,
            updated=bool(out.updated),
        )

    def _retire(self, req: _Request) -> None:
        self._results[req.rid] = req.generated
        self._running.remove(req)
        self._free_pages.extend(req.pages)
        self._free_slots.append(req.slot)
        self._page_table[req.slot] = INVALID

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
        while any(r not in self._results for r in rids):
            self.step()
        return [self._results[r] for r in rids]

    # -- checkpoints ----------------------------------------------------------------------
    def save_finetuning(self, directory: str | Path) -> Path:
        """Checkpoints the finetuning job with Orbax: adapter, optimizer state (including
        gradients accumulated towards the next update), counters, losses and the samples still
        queued. Call it between samples (e.g. after a `StepReport` with ``sample_loss``).

        Raises:
            ConfigError: a sample is in flight (its buffers are not checkpointed).
        """
        import orbax.checkpoint as ocp

        if self._ft is not None:
            raise ConfigError(
                "save_finetuning",
                f"sample cursor {self._ft_cursor}",
                "a finetuning sample is in flight",
                "save after the step that reports the sample's loss (StepReport.sample_loss)",
            )
        directory = Path(directory).absolute()
        step = self.samples_done
        # Host part first: a crash before Orbax commits leaves only an unused JSON behind.
        atomic_write_json(
            directory / f"host_{step}.json",
            {"losses": self.losses, "samples": list(self._samples), "samples_done": step},
        )
        mngr = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        )
        mngr.save(step, args=ocp.args.StandardSave(self._ckpt_tree()))
        mngr.wait_until_finished()
        log.info("finetuning checkpoint %d written to %s", step, directory)
        return directory

    def restore_finetuning(self, directory: str | Path) -> int:
        """Resumes the finetuning job of the latest checkpoint in ``directory`` (requests and
        the KV cache are untouched). Returns the number of samples already done.

        Raises:
            ConfigError: no checkpoint there.
        """
        import orbax.checkpoint as ocp

        directory = Path(directory).absolute()
        mngr = ocp.CheckpointManager(directory)
        step = mngr.latest_step()
        if step is None:
            raise ConfigError(
                "restore_finetuning", str(directory), "holds no checkpoint", "save_finetuning"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._ckpt_tree())
        tree = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
        host = json.loads((directory / f"host_{step}.json").read_text())
        self.state = dataclasses.replace(self.state, **tree)
        self.losses = list(host["losses"])
        self.samples_done = int(host["samples_done"])
        self._samples = collections.deque(host["samples"])
        self._ft, self._bwd_chunk, self._ft_cursor = None, None, 0
        return self.samples_done

    def _ckpt_tree(self) -> dict[str, Any]:
        st = self.state
        return {
            "lora": st.lora,
            "opt_state": st.opt_state,
            "samples_done": st.samples_done,
            "updates_done": st.updates_done,
            "loss_acc": st.loss_acc,
        }

    def bank_index(self, name: str | None) -> int:
        """Adapter index of a bank adapter (`BASE` for None)."""
        return BASE if name is None else self.bank.index(name)
