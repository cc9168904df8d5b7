"""Finetuning jobs of the server: records, the queue, and their run on the engine thread.

Up to `MAX_RUNNING_JOBS` jobs run at once, each as its own engine finetuning job (own
adapter, optimizer state, ``batch_size`` = gradient accumulation and
``learning_rate_multiplier``; `CoServeEngine.add_job`): they take turns sample by sample in
the finetuning budget the engine grants; further jobs wait, FIFO. A job:

1. is created (HTTP handler) from an uploaded JSONL file, parsed and checked then
   (`parse_dataset`: a bad line is a 400 that names it), and recorded as ``queued``;
2. starts on the engine thread when fewer than `MAX_RUNNING_JOBS` run: a fresh adapter, the
   samples queued ``n_epochs`` times (``running``);
3. gets a ``metrics`` event per finetuning sample with its loss;
4. on its last sample, saves the adapter (PEFT layout, a new version folder renamed into
   place), hot-swaps it into the inference bank under ``fine_tuned_model`` and is recorded
   ``succeeded``. A non-finite loss or any error marks it ``failed`` (inference goes on);
   ``cancel`` drops its samples before the next engine step.

Fine-tuned model names: ``ft:<base>:<suffix>`` (a later job with the same suffix makes a new
version of that model) or ``ft:<base>:<job id>``.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from jgraph.core import ConfigError
from jgraph.coserve._dataset import parse_dataset
from jgraph.coserve._engine import StepReport
from jgraph.coserve._lora import save_peft
from jgraph.coserve._openai_api import APIError, FineTuneRequest
from jgraph.coserve._state import new_id

if TYPE_CHECKING:
    from jgraph.coserve._service import CoServeService

__all__ = ["JobManager"]

log = logging.getLogger(__name__)

ACTIVE = ("validating_files", "queued", "running")
MAX_RUNNING_JOBS = 4
"""Jobs trained at once (each keeps an adapter and its optimizer state on the device)."""


class _Run:
    """Progress of a running job (engine thread)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.tokens = total, 0, 0


class JobManager:
    """The finetuning jobs of one `CoServeService` (records under its state directory)."""

    def __init__(self, service: CoServeService) -> None:
        self.svc = service
        self.state = service.state
        self.jobs: dict[str, dict[str, Any]] = {}
        self.queue: collections.deque[str] = collections.deque()
        self.running: dict[str, _Run] = {}  # job id -> progress (engine thread)
        self._samples: dict[str, list[list[int]]] = {}
        adapters = self.state.adapters()
        by_job = {m.get("job_id"): name for name, m in adapters.items()}
        for job in self.state.jobs():
            self.jobs[job["id"]] = job
            if job["status"] == "running" and job["id"] in by_job:
                # Killed after the adapter was saved but before the record said so.
                self._finish_record(job, by_job[job["id"]])
            elif job["status"] == "running":
                self._fail(job, "the server stopped while the job ran; create a new job")
            elif job["status"] in ("queued", "validating_files"):
                self.queue.append(job["id"])

    # -- records --------------------------------------------------------------------------
    def _event(self, job: dict[str, Any], message: str, *, data: Any = None) -> None:
        ev = {
            "id": new_id("ftevent"),
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": "info" if job.get("status") != "failed" else "error",
            "message": message,
            "type": "metrics" if data is not None else "message",
            "data": data,
        }
        self.state.add_event(job["id"], ev)

    def _save(self, job: dict[str, Any]) -> None:
        self.state.save_job(job)

    def _fail(self, job: dict[str, Any], message: str, code: str = "job_failed") -> None:
        job.update(status="failed", finished_at=int(time.time()))
        job["error"] = {"code": code, "message": message, "param": None}
        self._save(job)
        self._event(job, f"Fine-tuning job failed: {message}")
        log.warning("finetuning job %s failed: %s", job["id"], message)

    def _finish_record(self, job: dict[str, Any], model: str) -> None:
        job.update(status="succeeded", finished_at=int(time.time()), fine_tuned_model=model)
        self._save(job)
        self._event(job, f"The job has successfully completed; model {model}")

    def get(self, job_id: str) -> dict[str, Any]:
        with self.svc.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise APIError(
                    404, f"No fine-tuning job {job_id!r}", param="fine_tuning_job_id",
                    code="fine_tuning_job_not_found",
                )  # fmt: skip
            return dict(job)

    def all(self) -> list[dict[str, Any]]:
        with self.svc.lock:
            return sorted((dict(j) for j in self.jobs.values()),
                          key=lambda j: (j["created_at"], j["id"]), reverse=True)  # fmt: skip

    def events(self, job_id: str) -> list[dict[str, Any]]:
        self.get(job_id)
        return list(reversed(self.state.events(job_id)))  # newest first, as OpenAI

    # -- handler side ---------------------------------------------------------------------
    def create(self, req: FineTuneRequest) -> dict[str, Any]:
        """Checks and queues a job (blocking: call it from a worker thread)."""
        svc = self.svc
        if req.model != svc.base_name:
            svc.model(req.model)  # 404 for an unknown name
            raise APIError(
                400, f"finetuning starts from the base model {svc.base_name!r} only",
                param="model", code="invalid_model",
            )  # fmt: skip
        if req.validation_file is not None:
            raise APIError(400, "validation files are not supported", param="validation_file")
        hp = req.hyperparameters
        epochs = 1 if hp is None or hp.n_epochs == "auto" else hp.n_epochs
        if not isinstance(epochs, int) or not 1 <= epochs <= 1000:
            raise APIError(400, "n_epochs must be 1..1000", param="hyperparameters.n_epochs")
        accum = svc.backend.grad_accum if hp is None or hp.batch_size == "auto" else hp.batch_size
        if isinstance(accum, bool) or not isinstance(accum, int) or not 1 <= accum <= 256:
            raise APIError(
                400, "batch_size (samples per optimizer update) must be 1..256 or 'auto'",
                param="hyperparameters.batch_size",
            )  # fmt: skip
        lr_mult = 1.0 if hp is None else hp.learning_rate_multiplier
        lr_mult = 1.0 if lr_mult == "auto" else lr_mult
        if isinstance(lr_mult, bool) or not isinstance(lr_mult, int | float):
            lr_mult = -1.0
        if not 0 < lr_mult <= 100 or not math.isfinite(lr_mult):
            raise APIError(
                400, "learning_rate_multiplier must be in (0, 100] or 'auto' (it scales "
                f"ServeConfig.learning_rate={svc.config.learning_rate})",
                param="hyperparameters.learning_rate_multiplier",
            )  # fmt: skip
        data = self.state.file_bytes(req.training_file)
        if data is None:
            raise APIError(
                404, f"No file {req.training_file!r}", param="training_file", code="file_not_found"
            )
        try:
            samples = parse_dataset(
                data, svc.tokenizer, max_len=svc.backend.ft_max_len,
                template=svc.runtime.chat_template,
            )  # fmt: skip
        except ConfigError as exc:
            raise APIError(
                400, str(exc), param="training_file", code="invalid_training_file"
            ) from None
        base = svc.base_name
        job_id = new_id("ftjob")
        name = f"ft:{base}:{req.suffix}" if req.suffix else f"ft:{base}:{job_id}"
        job = {
            "id": job_id,
            "object": "fine_tuning.job",
            "model": base,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "jgraph",
            "result_files": [],
            "status": "queued",
            "validation_file": None,
            "training_file": req.training_file,
            "hyperparameters": {
                "n_epochs": epochs,
                "batch_size": accum,
                "learning_rate_multiplier": float(lr_mult),
            },
            "trained_tokens": None,
            "error": None,
            "seed": req.seed or 0,
            "estimated_finish": None,
            "integrations": [],
            "suffix": req.suffix,
            "user_provided_suffix": req.suffix,
            "jgraph_model_name": name,
            "jgraph_samples": len(samples),
        }
        with svc.lock:
            self.jobs[job_id] = job
            self._save(job)
            self._event(job, f"Created fine-tuning job {job_id} ({len(samples)} examples)")
            self._samples[job_id] = samples
            self.queue.append(job_id)
        svc.post(lambda: None)  # wake the engine thread
        return dict(job)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancels a queued or running job; a running one stops before the next step."""
        with self.svc.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return self.get(job_id)  # raises the 404
            if job["status"] not in ACTIVE:
                raise APIError(
                    400, f"the job is {job['status']}; only queued or running jobs can be "
                    "cancelled", param="fine_tuning_job_id",
                )  # fmt: skip
            job.update(status="cancelled", finished_at=int(time.time()))
            self._save(job)
            self._event(job, "Fine-tuning job cancelled")
            if job_id in self.queue:
                self.queue.remove(job_id)
            self._samples.pop(job_id, None)
        self.svc.post(self._stop_cancelled)
        return dict(job)

    # -- engine thread --------------------------------------------------------------------
    def _stop_cancelled(self) -> None:
        for job_id in [j for j in self.running if self.jobs[j]["status"] == "cancelled"]:
            self.svc.backend.stop_training(job_id)
            del self.running[job_id]

    def tick(self) -> None:
        """Starts queued jobs while fewer than `MAX_RUNNING_JOBS` run (engine thread)."""
        self._stop_cancelled()
        while len(self.running) < MAX_RUNNING_JOBS and self.queue:
            with self.svc.lock:
                job_id = self.queue.popleft()
                job = self.jobs[job_id]
                if job["status"] not in ("queued", "validating_files"):
                    continue
            try:
                samples = self._samples.pop(job_id, None) or self._load_samples(job)
                hp = job["hyperparameters"]
                epochs = int(hp["n_epochs"])
                self.svc.backend.start_training(
                    job_id, samples, epochs=epochs, grad_accum=int(hp["batch_size"]),
                    learning_rate_multiplier=float(hp["learning_rate_multiplier"]),
                )  # fmt: skip
            except (ConfigError, APIError, OSError) as exc:
                with self.svc.lock:
                    self._fail(job, str(getattr(exc, "message", exc)), "invalid_training_file")
                continue
            self.running[job_id] = run = _Run(len(samples) * epochs)
            with self.svc.lock:
                job["status"] = "running"
                self._save(job)
                self._event(job, f"Fine-tuning job started: {run.total} samples")

    def _load_samples(self, job: dict[str, Any]) -> list[list[int]]:
        data = self.state.file_bytes(job["training_file"])
        if data is None:
            raise APIError(404, f"the training file {job['training_file']} was deleted")
        svc = self.svc
        return parse_dataset(
            data, svc.tokenizer, max_len=svc.backend.ft_max_len, template=svc.runtime.chat_template
        )

    def after_step(self, rep: StepReport) -> None:
        """Records a finished sample's loss; completes a job after its last (engine thread)."""
        self._stop_cancelled()  # a cancel that arrived during the step
        job_id = rep.ft_job
        run = self.running.get(job_id) if job_id is not None else None
        if job_id is None or run is None:
            return
        job = self.jobs[job_id]
        run.tokens += rep.ft_forward_tokens
        if rep.sample_loss is not None:
            run.done += 1
            loss = rep.sample_loss
            with self.svc.lock:
                self._event(
                    job, f"Step {run.done}/{run.total}: training loss={loss:.4f}",
                    data={"step": run.done, "total_steps": run.total, "train_loss": loss},
                )  # fmt: skip
            if not math.isfinite(loss):
                self.svc.backend.stop_training(job_id)
                del self.running[job_id]
                with self.svc.lock:
                    self._fail(job, f"the training loss became {loss}", "non_finite_loss")
                return
        if run.done == run.total:
            self._complete(job)

    def _complete(self, job: dict[str, Any]) -> None:
        svc, run = self.svc, self.running.pop(job["id"])
        name = job["jgraph_model_name"]
        lora = svc.backend.finish_training(job["id"])
        try:
            path, version = svc.state.save_adapter(
                name,
                lambda d: save_peft(d, lora, svc.runtime.lora_cfg, base_model=svc.base_name),
                job_id=job["id"],
            )
            svc.register_version(name, f"{name}@v{version}", str(path))
        except Exception as exc:  # a failed save fails the job, not the server
            log.exception("saving the adapter of job %s failed", job["id"])
            with svc.lock:
                self._fail(job, f"saving the adapter failed: {exc}", "save_failed")
            return
        with svc.lock:
            job["trained_tokens"] = run.tokens
            if job["status"] == "running":
                self._finish_record(job, name)
        log.info("finetuning job %s done: %s v%d", job["id"], name, version)

    def fail_active(self, message: str) -> None:
        for job_id in list(self.running):
            with self.svc.lock:
                self._fail(self.jobs[job_id], message, "engine_error")
            self.svc.backend.stop_training(job_id)
            del self.running[job_id]
