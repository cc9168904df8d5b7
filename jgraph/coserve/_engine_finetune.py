"""The finetuning side of `CoServeEngine`: jobs (each with its own samples, adapter and
optimizer state, taking turns sample by sample on the step's trainable slot), their
cancellation and restart, and their Orbax checkpoints. A mixin, so the engine module stays
about the step; the attributes it uses are set by `CoServeEngine.__init__`/`reset`.
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
from jgraph.coserve._accumulate import set_job_settings
from jgraph.coserve._backward import multi_steps
from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._finetune import FinetuneCursor
from jgraph.coserve._ft_jobs import DEFAULT_JOB, FinetuneJob, FinetuneJobs, JobInfo
from jgraph.coserve._lora import init_lora
from jgraph.coserve._parallel import shard_tree
from jgraph.coserve._step import CoServeState
from jgraph.coserve._validate import check_adapter, check_token_samples

__all__ = ["FinetuneMixin"]

log = logging.getLogger(__name__)


class FinetuneMixin:
    """Finetuning jobs and checkpoints of `CoServeEngine` (see the module docstring)."""

    cfg: LlamaConfig
    scfg: CoServeConfig
    lora_cfg: LoraConfig
    mesh: Mesh | None
    state: CoServeState
    _optimizer: optax.GradientTransformation
    _state_specs: Any
    _jobs: FinetuneJobs
    _job_key: jax.Array

    # -- finetuning -----------------------------------------------------------------------
    def add_finetuning(
        self, samples: Sequence[Sequence[int]], *, epochs: int = 1, job: str = DEFAULT_JOB
    ) -> None:
        """Queues finetuning samples (token id lists, trained in order, ``epochs`` times) for
        ``job`` (`add_job` creates others; jobs take turns sample by sample).

        Raises:
            ConfigError: a sample shorter than 2 tokens or longer than ``ft_max_len``, ids
                outside the vocabulary, float ids (refused, not truncated), text, or one flat
                list of ids instead of a list of samples (`check_token_samples`), or an unknown
                job.
        """
        target = self._jobs.get(job).cursor
        check_int("epochs", epochs, minimum=1)
        clean = check_token_samples(
            samples,
            vocab_size=self.cfg.vocab_size,
            min_len=2,
            max_len=self.scfg.ft_max_len,
            field="finetuning samples",
        )
        for _ in range(epochs):
            target.samples.extend(clean)

    def add_job(
        self,
        name: str,
        *,
        lora: dict[str, dict[str, jax.Array]] | None = None,
        grad_accum: int | None = None,
        learning_rate_multiplier: float = 1.0,
    ) -> None:
        """Adds a finetuning job with its own adapter and optimizer state; it shares the
        finetuning budget with the other jobs (they take turns sample by sample) and the
        compiled step (the adapter has the engine's `LoraConfig`; the optimizer is the
        engine's, its learning rate scaled by ``learning_rate_multiplier``).

        Args:
            name: the job's name (`add_finetuning`'s ``job``).
            lora: initial adapter (default: `init_lora`, B = 0, from the engine's key).
            grad_accum: samples per optimizer update (default: ``CoServeConfig.grad_accum``).
            learning_rate_multiplier: factor on the optimizer's updates (> 0).

        Raises:
            ConfigError: an existing name, bad settings, or an adapter with other targets.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError("job name", name, "must be a non-empty string", "name the job")
        if name in self._jobs:
            raise ConfigError("job name", name, "exists already", "pick another name")
        ga = self.scfg.grad_accum if grad_accum is None else grad_accum
        if lora is None:
            k = jax.random.fold_in(self._job_key, len(list(self._jobs)))
            lora = init_lora(self.cfg, self.lora_cfg, key=k)
        check_adapter(self.cfg, self.lora_cfg, lora, name=f"job {name!r} adapter")
        lora = jax.tree.map(jnp.copy, lora)  # the state is donated; never alias the caller's
        opt = multi_steps(self._optimizer, self.scfg).init(lora)
        opt = set_job_settings(opt, every_k=ga, lr_scale=learning_rate_multiplier)
        if self.mesh is not None:
            specs = self._state_specs
            assert specs is not None, "a mesh engine without state specs (a bug)"
            lora = shard_tree(lora, specs.lora, self.mesh)
            opt = shard_tree(opt, specs.opt_state, self.mesh)
        self._jobs.add(
            FinetuneJob(
                name=name,
                grad_accum=ga,
                lr_multiplier=float(learning_rate_multiplier),
                stash=(lora, opt),
            )
        )

    def cancel_job(self, name: str = DEFAULT_JOB) -> int:
        """Drops the job's queued samples and the one in flight (it stops within this step);
        its adapter and optimizer state stay (`trainable_adapter`). Returns the number of
        samples dropped."""
        c = self._jobs.get(name).cursor
        dropped = len(c.samples) + (c.sample is not None)
        c.samples.clear()
        if c.sample is not None:
            c.sample, c.bwd, c.fwd_done, c.bwd_first = None, None, 0, False
            # the aborted sample's partial loss must not leak into the next one
            self.state = dataclasses.replace(self.state, loss_acc=self.state.loss_acc * 0)
        return dropped

    def remove_job(self, name: str) -> None:
        """Forgets an idle job other than the default one (its adapter with it)."""
        if name == DEFAULT_JOB:
            raise ConfigError("job name", name, "is the default job", "cancel_job instead")
        if self._jobs.get(name).cursor.busy:
            raise ConfigError("job name", name, "still has samples", "cancel_job first")
        if name == self._jobs.active:
            self._activate(DEFAULT_JOB)
        self._jobs.remove(name)

    @property
    def jobs(self) -> dict[str, JobInfo]:
        """Progress of every finetuning job, by name."""
        return {n: self._jobs.info(n) for n in self._jobs}

    @property
    def _ft(self) -> FinetuneCursor:
        return self._jobs.current.cursor

    def _activate(self, name: str) -> None:
        """Swaps job ``name``'s adapter and optimizer state into the step (between samples)."""
        jobs = self._jobs
        if name == jobs.active:
            return
        cur, new = jobs.current, jobs.get(name)
        assert cur.cursor.sample is None, "job switch mid-sample (a bug)"
        assert new.stash is not None, "an inactive job without its state (a bug)"
        cur.stash = (self.state.lora, self.state.opt_state)
        lora, opt = new.stash
        new.stash = None
        self.state = dataclasses.replace(self.state, lora=lora, opt_state=opt)
        jobs.active = name
        log.info("finetuning job %r active", name)

    @property
    def losses(self) -> list[float]:
        """Loss of every sample of the default job completed, in order (other jobs: `jobs`)."""
        return self._jobs.get(DEFAULT_JOB).cursor.losses

    @property
    def samples_done(self) -> int:
        """Samples of the default job completed (forward and backward)."""
        return self._jobs.get(DEFAULT_JOB).cursor.samples_done

    def trainable_adapter(self, job: str | None = None) -> dict[str, dict[str, jax.Array]]:
        """A finetuning job's adapter weights (default: the active job's; save with
        `save_peft`)."""
        lora = self._job_tree(self._jobs.get(job or self._jobs.active))["lora"]
        return jax.tree.map(jnp.copy, lora)

    # -- checkpoints ----------------------------------------------------------------------
    def save_finetuning(self, directory: str | Path, *, job: str = DEFAULT_JOB) -> Path:
        """Checkpoints a finetuning job with Orbax: adapter, optimizer state (including
        gradients accumulated towards the next update and the job's settings), counters,
        losses and the samples still queued. Call it between the job's samples (e.g. after a
        `StepReport` with ``sample_loss``). Give each job its own folder.

        Raises:
            ConfigError: a sample of the job is in flight (its buffers are not checkpointed),
                or the folder already holds this or a later step (another job's folder).
        """
        j = self._jobs.get(job)
        if j.cursor.sample is not None:
            raise ConfigError(
                "save_finetuning",
                f"sample cursor {j.cursor.fwd_done}",
                "a finetuning sample is in flight",
                "save after the step that reports the sample's loss (StepReport.sample_loss)",
            )
        tree = self._job_tree(j)
        host = {**j.cursor.state(), "engine": self._describe(j, tree)}
        return _ft_checkpoint.save(directory, j.cursor.samples_done, tree, host)

    def restore_finetuning(self, directory: str | Path, *, job: str = DEFAULT_JOB) -> int:
        """Resumes finetuning job ``job`` from the latest checkpoint in ``directory``
        (requests, the KV cache and other jobs are untouched). Returns the number of samples
        the job already did.

        Raises:
            ConfigError: no checkpoint there; a missing, truncated or malformed file (named);
                an engine or job whose model, LoRA config, ``grad_accum`` or optimizer state
                differ from the saved job's.
        """
        j = self._jobs.get(job)
        tree = self._job_tree(j)
        restored, host = _ft_checkpoint.restore(directory, tree, self._describe(j, tree))
        if job == self._jobs.active:
            if j.cursor.sample is not None:  # drop the sample in flight with its partial loss
                self.cancel_job(job)
            self.state = dataclasses.replace(
                self.state, lora=restored["lora"], opt_state=restored["opt_state"]
            )
        else:
            j.stash = (restored["lora"], restored["opt_state"])
        j.cursor.load_state(host)
        j.updates = int(restored["updates_done"])
        j.lr_multiplier = float(restored["opt_state"].lr_scale)
        return j.cursor.samples_done

    def _describe(self, job: FinetuneJob, tree: dict[str, Any]) -> dict[str, Any]:
        return _ft_checkpoint.describe(self.cfg, self.lora_cfg, job.grad_accum, tree)

    def _job_tree(self, job: FinetuneJob) -> dict[str, Any]:
        if job.name == self._jobs.active:
            lora, opt = self.state.lora, self.state.opt_state
        else:
            assert job.stash is not None, "an inactive job without its state (a bug)"
            lora, opt = job.stash
        return {
            "lora": lora,
            "opt_state": opt,
            "samples_done": np.asarray(job.cursor.samples_done, np.int32),
            "updates_done": np.asarray(job.updates, np.int32),
        }

    def cancel_finetuning(self) -> int:
        """Drops the default job's queued samples and the one in flight (`cancel_job`; its
        partial gradient is discarded: the next sample's backward starts from zero); the
        trainable adapter, the optimizer state and the inference requests are kept. Takes
        effect at the next step. Returns the number of samples dropped."""
        return self.cancel_job(DEFAULT_JOB)

    def reset_finetuning(self, *, lora: dict[str, dict[str, jax.Array]]) -> None:
        """Starts finetuning afresh from ``lora`` without touching inference: drops the queued
        and in-flight samples (`cancel_finetuning`), zeroes the gradient, re-initializes the
        optimizer state and clears `losses` and `samples_done`. Queued and running requests,
        the KV cache and the bank are kept (unlike `reset`), and the step is not recompiled.
        Requests on `TRAINABLE` see ``lora`` from the next step on.

        Raises:
            ConfigError: ``lora`` does not fit the model or ``LoraConfig`` (`check_adapter`:
                targets, shapes, rank).
        """
        check_adapter(self.cfg, self.lora_cfg, lora)
        cur = self.state.lora
        self.cancel_finetuning()
        f32 = jnp.float32
        job = self._jobs.get(DEFAULT_JOB)
        lora = jax.tree.map(lambda a, c: jnp.array(a, c.dtype), lora, cur)  # a copy: donated
        opt = multi_steps(self._optimizer, self.scfg).init(lora)
        opt = set_job_settings(opt, every_k=job.grad_accum, lr_scale=job.lr_multiplier)
        if job.name == self._jobs.active:
            self.state = dataclasses.replace(
                self.state,
                lora=lora,
                grad=jax.tree.map(lambda a: jnp.zeros(a.shape, f32), lora),
                opt_state=opt,
                loss_acc=jnp.zeros((), f32),
                samples_done=jnp.zeros((), jnp.int32),
                updates_done=jnp.zeros((), jnp.int32),
            )
            if self.mesh is not None:
                self.state = shard_tree(self.state, self._state_specs, self.mesh)
        else:
            if self.mesh is not None:
                specs = self._state_specs
                assert specs is not None, "a mesh engine without state specs (a bug)"
                lora = shard_tree(lora, specs.lora, self.mesh)
                opt = shard_tree(opt, specs.opt_state, self.mesh)
            job.stash = (lora, opt)
        job.cursor, job.updates, job.forward_tokens = FinetuneCursor(), 0, 0
