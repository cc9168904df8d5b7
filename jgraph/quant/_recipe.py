"""The end-to-end recipe: train full precision, then DGMS, then harden and report.

Data flow of `run_recipe` (what ``jgraph quant train`` runs):

1. Load the data (`load_dataset`) and build the model (`make_model` for a
   bundled name; a user's Linen or NNX module is used as given, see `_kits`).
2. Full-precision phase: `train` with ``RunConfig.fp`` (checkpoints in
   ``out/fp``; skipped when ``out/fp`` already holds a finished run and
   ``resume`` is set).
3. ``dgms(model, config).init`` (``dgms_nnx`` for NNX): k-means mixtures on
   the FP weights. The hard accuracy here is the k-means-only baseline (no
   DGMS training).
4. DGMS phase: `train` with ``RunConfig.dgms`` on soft weights (checkpoints in
   ``out/dgms``), evaluated each epoch with hard weights.
5. Optional BatchNorm re-estimation with hard weights; `harden`;
   `compression_report`; histograms before/after (``out/hist/*.png``);
   ``out/hardened.npz`` (codebooks, uint8 indices, packed indices) and
   ``out/result.json``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from jgraph.core import atomic_write_bytes, atomic_write_json, check_int
from jgraph.quant._bn import reestimate_batch_stats
from jgraph.quant._config import DGMSConfig, Recipe
from jgraph.quant._data import Dataset, load_dataset
from jgraph.quant._harden import CompressionReport, Hardened, compression_report, pack_indices
from jgraph.quant._kits import check_model, describe, model_kit
from jgraph.quant._plot import plot_mixtures
from jgraph.quant._saved_run import HARDENED_STATE, save_hardened_state
from jgraph.quant._train import evaluate, train

__all__ = ["RunConfig", "RunResult", "run_recipe"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One recipe run.

    Attributes:
        model: ``resnet20``, ``cnn`` or ``mlp``, or your own model: a Linen
            module (called as `jgraph.quant.training.linen_apply` finds out:
            images first, then a ``train``-like switch if it has BatchNorm or
            dropout) or an NNX module (already initialized; it is copied, not
            modified). It must output ``data.num_classes`` logits.
        data: ``"digits"`` or a path to a ``.npz`` / image folder.
        seed: model init, k-means seeding and shuffling seed.
        fp: the full-precision recipe.
        dgms: the DGMS recipe.
        quant: the `DGMSConfig` (bits, layers, init).
        out: run folder (checkpoints, plots, results); None writes nothing.
        resume: continue from checkpoints in ``out``.
        plots: write the histogram PNGs.
        checkpoint: save Orbax checkpoints under ``out/fp`` and ``out/dgms``
            each epoch (needed for ``resume``).
    """

    model: str | nn.Module | nnx.Module = "resnet20"
    data: str | Path = "digits"
    seed: int = 0
    fp: Recipe = dataclasses.field(default_factory=lambda: Recipe(epochs=30, lr=3e-3))
    dgms: Recipe = dataclasses.field(default_factory=Recipe)
    quant: DGMSConfig = dataclasses.field(default_factory=DGMSConfig)
    out: Path | None = None
    resume: bool = False
    plots: bool = True
    checkpoint: bool = True

    def __post_init__(self) -> None:
        check_int("RunConfig.seed", self.seed, minimum=0)
        check_model(self.model)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
    """Accuracies, the compression report and where the artifacts are.

    Attributes:
        fp_accuracy: test accuracy of the full-precision model.
        kmeans_accuracy: hard accuracy right after k-means init (no DGMS training).
        kmeans_bn_accuracy: the same after BatchNorm re-estimation with the
            hard weights (only if the DGMS recipe re-estimates; else None).
        dgms_accuracy: hard accuracy after DGMS training (and BN re-estimation).
        report: the `CompressionReport` of the hardened model.
        fp_seconds: training time of the FP phase, summed over every process
            that trained it (a resumed run adds the time stored in its
            checkpoint); 0 when ``fp_variables`` were given.
        dgms_seconds: the same for the DGMS phase (BatchNorm re-estimation,
            hardening and evaluation excluded).
        artifacts: files written.
        fp_variables: the trained full-precision variables (not serialized).
        hardened: the deployable model (`harden`'s variables, codebooks and
            indices; not in ``as_dict``; saved as ``out/hardened.msgpack``).
    """

    fp_accuracy: float
    kmeans_accuracy: float
    kmeans_bn_accuracy: float | None
    dgms_accuracy: float
    report: CompressionReport
    fp_seconds: float
    dgms_seconds: float
    artifacts: tuple[Path, ...]
    fp_variables: Any = dataclasses.field(default=None, repr=False)
    hardened: Hardened | None = dataclasses.field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del d["fp_variables"], d["hardened"]
        d["report"] = self.report.as_dict()
        d["artifacts"] = [str(p) for p in self.artifacts]
        return d


def save_hardened(path: Path, hardened: Any) -> Path:
    """``.npz`` with ``codebook/<layer>`` (float32 [K]), ``indices/<layer>`` (uint8) and
    ``packed/<layer>`` (bit-packed indices)."""
    arrays = {}
    for name, idx in hardened.indices.items():
        book = hardened.codebooks[name]
        bits = max(1, (book.size - 1).bit_length())
        arrays[f"codebook/{name}"] = book
        arrays[f"indices/{name}"] = idx
        arrays[f"packed/{name}"] = pack_indices(idx, bits)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def run_recipe(
    config: RunConfig, *, data: Dataset | None = None, fp_variables: Any = None
) -> RunResult:
    """Full precision, then DGMS, then hardening; see the module docstring.

    Args:
        config: the run.
        data: an already loaded dataset (skips ``config.data``); the benchmark
            uses it to load once for many runs.
        fp_variables: trained full-precision variables (``RunResult.fp_variables``
            of an earlier run) to start from; skips the FP phase.

    Returns:
        A `RunResult`.

    Example:
        >>> from jgraph import quant
        >>> cfg = quant.recipes.RunConfig(model="mlp", fp=quant.recipes.Recipe(epochs=2),
        ...                       dgms=quant.recipes.Recipe(epochs=1), quant=quant.DGMSConfig(bits=2),
        ...                       plots=False)
        >>> result = quant.recipes.run_recipe(cfg)
        >>> result.report.layers[0].distinct <= 4
        True
    """
    data = data or load_dataset(config.data)
    kit = model_kit(config.model, data.num_classes)
    key = jax.random.key(config.seed)
    sample = data.x_train[:1]
    # Layer selection is checked before any training: a pattern that matches
    # nothing fails now, not after the full-precision phase.
    kit.check_layers(sample, config.quant)
    variables = kit.init(key, sample)
    model_name = describe(config.model)
    run_meta = {"model": model_name, "data": str(config.data)}
    out = config.out
    artifacts: list[Path] = []

    fp_seconds = 0.0
    if fp_variables is None:
        fp = train(
            kit.fp_apply,
            variables,
            data.x_train,
            data.y_train,
            data.x_test,
            data.y_test,
            config.fp,
            seed=config.seed,
            ckpt_dir=None if out is None or not config.checkpoint else out / "fp",
            resume=config.resume,
            description=f"{model_name} full precision",
            meta=run_meta,
        )
        fp_vars, fp_seconds, fp_history = fp.variables, fp.seconds, fp.history
    else:
        fp_vars, fp_history = fp_variables, []
    fp_acc = evaluate(kit.fp_apply, fp_vars, data.x_test, data.y_test)

    q_apply, qvars0 = kit.quantize(fp_vars, sample, config.quant, jax.random.fold_in(key, 1))
    kmeans_acc = evaluate(q_apply, qvars0, data.x_test, data.y_test)
    kmeans_bn_acc = None
    if config.dgms.bn_reestimate:
        kmeans_bn_acc = evaluate(
            q_apply,
            reestimate_batch_stats(
                q_apply,
                qvars0,
                data.x_train,
                batch_size=config.dgms.batch_size,
                passes=config.dgms.bn_passes,
            ),
            data.x_test,
            data.y_test,
        )
    log.info("fp accuracy %.4f, k-means-only accuracy %.4f", fp_acc, kmeans_acc)

    q = train(
        q_apply,
        qvars0,
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        config.dgms,
        seed=config.seed,
        tau0=config.quant.tau0,
        ckpt_dir=None if out is None or not config.checkpoint else out / "dgms",
        resume=config.resume,
        description=f"{model_name} DGMS {config.quant.bits}-bit",
        meta={**run_meta, "quant": dataclasses.asdict(config.quant)},
    )
    qvars = q.variables
    if config.dgms.bn_reestimate:
        qvars = reestimate_batch_stats(
            q_apply,
            qvars,
            data.x_train,
            batch_size=config.dgms.batch_size,
            passes=config.dgms.bn_passes,
        )
    dgms_acc = evaluate(q_apply, qvars, data.x_test, data.y_test)
    hardened = kit.harden(q_apply, qvars, config.quant)
    report = compression_report(hardened)
    result = RunResult(
        fp_accuracy=fp_acc,
        kmeans_accuracy=kmeans_acc,
        kmeans_bn_accuracy=kmeans_bn_acc,
        dgms_accuracy=dgms_acc,
        report=report,
        fp_seconds=fp_seconds,
        dgms_seconds=q.seconds,
        artifacts=(),
        fp_variables=fp_vars,
        hardened=hardened,
    )
    if out is not None:
        if config.plots:
            artifacts += plot_mixtures(
                kit.plot_view(qvars0),
                kit.plot_view(qvars),
                out / "hist",
                sigma_min=config.quant.sigma_min,
            )
        artifacts.append(save_hardened(out / "hardened.npz", hardened))
        artifacts.append(save_hardened_state(out / HARDENED_STATE, hardened))
        artifacts.append(out / "result.json")
        result = dataclasses.replace(result, artifacts=tuple(artifacts))
        atomic_write_json(
            out / "result.json",
            {
                **result.as_dict(),
                "config": {
                    "model": model_name,
                    "num_classes": data.num_classes,
                    "input_shape": list(data.x_train.shape[1:]),
                    "data": str(config.data),
                    "seed": config.seed,
                    "fp": dataclasses.asdict(config.fp),
                    "dgms": dataclasses.asdict(config.dgms),
                    "quant": dataclasses.asdict(config.quant),
                },
                "history": {"fp": fp_history, "dgms": q.history},
            },
        )
    return result
