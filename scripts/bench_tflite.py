"""DGMS to .tflite: sizes, LiteRT parity, distinct codes and interpreter latency (issue #17).

Trains the ResNet-20-style model on bundled digits (full precision, then DGMS at
K = 16 and K = 4), exports it with `tflite_export` in every mode and checks each
file in the LiteRT interpreter on the test set:

* ``fp32``: the full-precision model, ``float`` mode: the baseline of every ratio.
* ``float``: the K = 16 hardened model in float32 (K shared values per kernel).
* ``codebook_int8``: int8 weights that keep the codebook (<= K codes per tensor).
* ``dynamic_int8``, ``full_int8``: the converter's standard post-training
  quantization (full_int8 calibrated on the training images) as baselines.

It reports the raw, ``gzip -9`` and DGMS-packed sizes (b-bit indices + codebooks +
float32 for the rest: theoretical) with ratios against the fp32 file, the parity
`export` measures on the test set (batch 1; codebook_int8 against the trained,
unsnapped hard-quantized model, ``ExportResult.trained_parity``, and against the
snapped model it exports), the distinct stored values of every DGMS tensor, the op
lists, and the interpreter latency: 1 thread, the timing thread pinned to one core
(``os.sched_setaffinity``, where the OS has it), warm-up, then the median of
``--invocations`` single-image ``invoke()`` calls per model, in interleaved rounds
so that load from other processes hits every model alike. Latency is measured with
LiteRT's default CPU delegate (``xnnpack``, for the ops it takes) and with the
builtin kernels only (``none``), as `tflite_export.TFLiteRunner`'s ``delegate``
names them, and labelled with ``platform.machine()`` and the CPU model: numbers from
an x86 machine are x86 numbers, never ARM numbers.

    python scripts/bench_tflite.py                       # full run (~3-4 min on 2 busy cores)
    python scripts/bench_tflite.py --smoke --out r.json  # CI: small CNN, 50 invocations
    python scripts/bench_tflite.py --save-dir models/    # also keep the .tflite files

ARM (an aarch64 board or phone). The script runs unchanged there:

* Time the files a run saved: copy ``--save-dir`` and the repository, then
  ``pip install numpy ai-edge-litert`` (LiteRT ships aarch64 Linux wheels; jax and
  TensorFlow are not needed for this) and run
  ``PYTHONPATH=. python scripts/bench_tflite.py --time-dir models/ --out arm.json``.
  Pick the core with ``--core`` (on big.LITTLE SoCs the big cores are usually the
  highest-numbered). The whole benchmark (training, export) also runs on an
  aarch64 Linux machine where jax and TensorFlow install. The wheel also carries
  LiteRT's Python benchmark tool (CompiledModel API, milliseconds to 2 decimals):
  ``python -m ai_edge_litert.tools.benchmark_litert_model --model=<file>.tflite
  --num_threads=1 --num_runs=1000 --warmup_runs=100``.
* Android, or anywhere without Python: LiteRT's ``benchmark_model`` binary.
  ``adb push models/ /data/local/tmp/``, then for each file
  ``adb shell taskset f0 /data/local/tmp/benchmark_model
  --graph=/data/local/tmp/models/<file>.tflite --num_threads=1 --num_runs=1000
  --warmup_runs=50`` (``taskset f0``: cores 4-7, the big cores of many SoCs;
  ``--use_xnnpack=false`` for builtin kernels only, the ``none`` rows), and
  compare each int8 file's average with the fp32 file's.

Targets (issue #17), printed as met or missed, never adjusted: the K = 16 model
>= 5x smaller than FP32 after gzip (gzip vs gzip; float and codebook_int8 each);
codebook_int8 raw size >= 3.5x smaller than the fp32 .tflite with at most K codes
per DGMS tensor; codebook_int8 top-1 agreement with the JAX hard-quantized model
>= 99.5%; each int8 mode >= 2x faster than fp32 (XNNPACK delegate, this CPU).

The hardened models come from `run_recipe` (``RunResult.hardened``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jgraph.core import atomic_write_json, format_table

INT8_MODES = ("codebook_int8", "dynamic_int8", "full_int8")
DELEGATES = ("xnnpack", "none")
"""``xnnpack``: the interpreter as an app gets it (LiteRT's default CPU delegate for
the ops it takes); ``none``: builtin kernels only. `tflite_export.TFLiteRunner`'s
names; the interpreter is built here because ``--time-dir`` runs without jax."""


# ---------------------------------------------------------------- machine and timing


def cpu_label() -> dict[str, Any]:
    """The machine the latencies belong to: architecture, CPU model, cores."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    # x86 names the CPU in "model name"; aarch64 boards in "Model"/"Hardware" or only by part.
    model = (
        fields.get("model name")
        or fields.get("Model")
        or fields.get("Hardware")
        or (
            f"implementer {fields['CPU implementer']} part {fields['CPU part']}"
            if "CPU part" in fields
            else ""
        )
        or platform.processor()
        or "unknown"
    )
    machine = platform.machine()
    return {
        # Other processes share the cores on a busy machine: say how busy it was.
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "machine": machine,
        "arch_label": "x86" if machine.lower() in ("x86_64", "amd64", "i686", "x86") else machine,
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "system": platform.system(),
        "python": platform.python_version(),
    }


def _pin(core: int | None) -> tuple[int | None, Any]:
    """Pins the calling thread (which runs ``invoke`` with 1 thread) to one core."""
    if not hasattr(os, "sched_setaffinity"):
        return None, None
    before = os.sched_getaffinity(0)
    target = max(before) if core is None else core
    os.sched_setaffinity(0, {target})
    return target, before


def _interpreter(data: bytes, delegate: str, x: np.ndarray | None) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (
        OpResolverType.AUTO
        if delegate == "xnnpack"
        else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    it = Interpreter(
        model_content=bytes(data), num_threads=1, experimental_op_resolver_type=resolver
    )
    it.allocate_tensors()
    (inp,) = it.get_input_details()
    if x is None:  # a saved file timed on its own: any input of the right shape
        x = np.random.default_rng(0).random(inp["shape"])
    it.set_tensor(inp["index"], np.asarray(x, inp["dtype"]).reshape(inp["shape"]))
    return it


def time_models(
    models: dict[str, bytes],
    x: np.ndarray | None,
    *,
    invocations: int,
    warmup: int,
    rounds: int,
    core: int | None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Median ``invoke()`` time of each model, per delegate, in interleaved rounds.

    Returns:
        (rows, the core the timing thread was pinned to, or None).
    """
    pinned, before = _pin(core)
    rows: list[dict[str, Any]] = []
    try:
        for delegate in DELEGATES:
            its = {name: _interpreter(data, delegate, x) for name, data in models.items()}
            samples: dict[str, list[int]] = {name: [] for name in its}
            for it in its.values():
                for _ in range(warmup):
                    it.invoke()
            per_round = math.ceil(invocations / rounds)
            names = list(its)
            for r in range(rounds):
                # Rotate the order so that no model always runs right after another.
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    it, out = its[name], samples[name]
                    for _ in range(per_round):
                        t0 = time.perf_counter_ns()
                        it.invoke()
                        out.append(time.perf_counter_ns() - t0)
            for name, ns in samples.items():
                us = np.asarray(ns[:invocations], np.float64) / 1e3
                rows.append(
                    {
                        "model": name,
                        "delegate": delegate,
                        "median_us": float(np.median(us)),
                        "p10_us": float(np.percentile(us, 10)),
                        "p90_us": float(np.percentile(us, 90)),
                        "invocations": int(us.size),
                    }
                )
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
    fp32 = _baseline(models)
    base = {row["delegate"]: row["median_us"] for row in rows if row["model"] == fp32}
    for row in rows:
        row["speedup_vs_fp32"] = base[row["delegate"]] / row["median_us"] if base else None
    return rows, pinned


def _baseline(models: dict[str, Any]) -> str:
    names = [n for n in models if n.endswith("fp32")]
    return names[0] if names else ""


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- export


@dataclasses.dataclass
class Exported:
    name: str
    k: int | None
    mode: str
    reference: str
    result: Any
    seconds: float

    @property
    def check(self) -> Any:
        """The parity against ``reference`` (codebook_int8: the trained, unsnapped model)."""
        return self.result.trained_parity or self.result.parity


def export_one(
    name: str,
    k: int | None,
    mode: str,
    model: Any,
    *,
    variables: Any = None,
    hardened: Any = None,
    data: Any,
    n_test: int,
    calibration: int,
    save_dir: Path | None,
) -> Exported:
    import tflite_export

    t0 = time.perf_counter()
    # verify="report": a float export that misses 1e-5 is reported here, not raised.
    config = tflite_export.ExportConfig(
        mode=mode,  # type: ignore[arg-type]
        verify="report",
        calibration_batches=calibration,
    )
    res = tflite_export.export(
        model,
        (data.x_test[:1],),
        config,
        variables=variables,
        hardened=hardened,
        apply_kwargs={"train": False},
        representative_data=data.x_train if mode == "full_int8" else None,
        data=data.x_test[:n_test],
        labels=data.y_test[:n_test],
        path=None if save_dir is None else save_dir / f"{name}.tflite",
    )
    return Exported(
        name=name,
        k=k,
        mode=mode,
        reference="jax fp32" if hardened is None else "jax hard-quantized",
        result=res,
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------- reporting


def size_rows(exports: Sequence[Exported]) -> list[dict[str, Any]]:
    base = exports[0].result.size
    rows = []
    for e in exports:
        s = e.result.size
        rows.append(
            {
                "export": e.name,
                "K": e.k or "-",
                "mode": e.mode,
                "raw_B": s.raw,
                "gzip_B": s.gzip,
                "packed_B": s.packed if s.packed is not None else "",
                "raw_x": base.raw / s.raw,
                "packed_x": base.raw / s.packed if s.packed else "",
                "gzip_x": base.gzip / s.gzip,
                "gzip_vs_fp32_raw_x": base.raw / s.gzip,
            }
        )
    return rows


def parity_rows(exports: Sequence[Exported]) -> list[dict[str, Any]]:
    rows = []
    for e in exports:
        p = e.check
        # codebook_int8: .parity is against the snapped model that was exported.
        snapped = e.result.parity if e.result.trained_parity else None
        rows.append(
            {
                "export": e.name,
                "reference": e.reference,
                "max_abs_err": p.max_abs_error,
                "top1_agree_%": 100 * p.top1_agreement,
                "tflite_acc_%": 100 * p.tflite_accuracy,
                "jax_acc_%": 100 * p.jax_accuracy,
                "float_1e-5_passed": p.passed if p.kind == "allclose" else "",
                "vs_snapped_max_abs": snapped.max_abs_error if snapped else "",
                "vs_snapped_agree_%": 100 * snapped.top1_agreement if snapped else "",
            }
        )
    return rows


def code_rows(exports: Sequence[Exported]) -> list[dict[str, Any]]:
    layers: dict[str, dict[str, Any]] = {}
    for e in exports:
        for c in e.result.codebooks:
            row = layers.setdefault(c.layer, {"layer": c.layer, "K": c.k})
            tag = f"{c.distinct}/{c.distinct_per_channel}"
            row[e.name] = f"{tag} {c.stored}" + ("" if c.preserved else " !")
    return list(layers.values())


def op_rows(exports: Sequence[Exported]) -> list[dict[str, Any]]:
    return [
        {
            "export": e.name,
            "ops": len(e.result.ops),
            "op_counts": ", ".join(
                f"{k} x{v}" for k, v in sorted(e.result.model.op_counts.items())
            ),
        }
        for e in exports
    ]


def evaluate_targets(
    exports: Sequence[Exported], latency: Sequence[dict[str, Any]], k_main: int
) -> dict[str, dict[str, Any]]:
    by = {e.name: e for e in exports}
    fp = exports[0].result.size
    t: dict[str, dict[str, Any]] = {}
    for mode in ("float", "codebook_int8"):
        e = by.get(f"k{k_main}_{mode}")
        if e is not None:
            ratio = fp.gzip / e.result.size.gzip
            t[f"k{k_main}_{mode}_gzip_5x"] = {"ratio": ratio, "target": 5.0, "met": ratio >= 5.0}
    cb = by.get(f"k{k_main}_codebook_int8")
    if cb is not None:
        ratio = fp.raw / cb.result.size.raw
        codes = max((c.distinct for c in cb.result.codebooks), default=0)
        ok = bool(cb.result.codebooks) and all(c.distinct <= c.k for c in cb.result.codebooks)
        t["codebook_int8_raw_3.5x_and_K_codes"] = {
            "ratio": ratio,
            "max_codes": codes,
            "K": k_main,
            "target": 3.5,
            "met": ratio >= 3.5 and ok,
        }
        agree = cb.check.top1_agreement
        t["codebook_int8_top1_agreement_99.5"] = {
            "agreement": agree,
            "target": 0.995,
            "met": agree >= 0.995,
        }
    for r in latency:
        if r["delegate"] == "xnnpack" and r["model"].split("_", 1)[-1] in INT8_MODES:
            s = r["speedup_vs_fp32"]
            t[f"{r['model']}_latency_2x"] = {"speedup": s, "target": 2.0, "met": s >= 2.0}
    return t


def export_record(e: Exported) -> dict[str, Any]:
    return {
        "name": e.name,
        "K": e.k,
        "mode": e.mode,
        "reference": e.reference,
        "seconds": e.seconds,
        "ops": list(e.result.ops),
        **e.result.as_dict(),
    }


# ---------------------------------------------------------------- the runs


def time_dir(args: argparse.Namespace) -> int:
    """Latency only, of the .tflite files in a folder (needs numpy and ai-edge-litert)."""
    files = sorted(args.time_dir.glob("*.tflite"))
    if not files:
        print(f"no .tflite files in {args.time_dir}", file=sys.stderr)
        return 2
    models = {f.stem: f.read_bytes() for f in files}
    if not _baseline(models):
        print(f"note: no *fp32.tflite in {args.time_dir}; no speed-ups", file=sys.stderr)
    rows, pinned = time_models(
        models,
        None,
        invocations=args.invocations,
        warmup=args.warmup,
        rounds=args.rounds,
        core=args.core,
    )
    machine = cpu_label()
    print(f"LiteRT latency on {machine['arch_label']} ({machine['cpu_model']}), core {pinned}")
    print(format_table(rows))
    if args.out:
        atomic_write_json(
            args.out,
            {
                "benchmark": "bench_tflite",
                "time_dir": str(args.time_dir),
                "machine": machine,
                "ai_edge_litert": _litert_version(),
                "pinned_core": pinned,
                "latency": rows,
                "rows": rows,
            },
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI (< 60 s)")
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument("--save-dir", type=Path, help="write the .tflite files here")
    parser.add_argument("--time-dir", type=Path, help="only time the .tflite files in this folder")
    parser.add_argument("--model", default="resnet20", choices=("resnet20", "cnn", "mlp"))
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2], help="first: main K")
    parser.add_argument("--fp-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10, help="DGMS epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--invocations", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--core", type=int, help="core to pin to (default: the last allowed)")
    args = parser.parse_args(argv)
    if args.time_dir is not None:
        return time_dir(args)
    if args.smoke:
        args.model, args.fp_epochs, args.epochs, args.bits = "cnn", 2, 1, [4]
        args.invocations, args.warmup, args.rounds = 50, 5, 2
    os.environ.setdefault("JGRAPH_PROGRESS", "0")
    return full_run(args)


def full_run(args: argparse.Namespace) -> int:
    from jgraph import quant
    from jgraph.core import environment, write_results

    start = time.perf_counter()
    R = quant.recipes
    data = R.load_dataset("digits")
    n_test = 100 if args.smoke else len(data.x_test)
    calibration = 32 if args.smoke else len(data.x_train)
    fp_recipe = R.Recipe(epochs=args.fp_epochs, optimizer="sgd", lr=0.1, weight_decay=5e-4)
    dgms_recipe = R.Recipe(epochs=args.epochs)
    model = R.make_model(args.model, data.num_classes)
    save_dir = args.save_dir
    kw = {"data": data, "n_test": n_test, "calibration": calibration, "save_dir": save_dir}
    exports: list[Exported] = []
    training: dict[str, Any] = {"dgms": {}}
    fp_vars = None
    for bits in args.bits:
        k = 2**bits
        # The first run trains the FP32 model; the others start from it.
        run = R.run_recipe(
            R.RunConfig(
                model=args.model,
                seed=args.seed,
                fp=fp_recipe,
                dgms=dgms_recipe,
                quant=quant.DGMSConfig(bits=bits),
                plots=False,
                checkpoint=False,
            ),
            data=data,
            fp_variables=fp_vars,
        )
        if fp_vars is None:
            fp_vars = run.fp_variables
            training.update(fp_accuracy=run.fp_accuracy, fp_seconds=run.fp_seconds)
            print(f"trained {args.model}: fp32 {run.fp_accuracy:.4f}", flush=True)
            exports.append(
                export_one(f"{args.model}_fp32", None, "float", model, variables=fp_vars, **kw)
            )
        training["dgms"][bits] = {
            "K": k,
            "accuracy": run.dgms_accuracy,
            "kmeans_accuracy": run.kmeans_accuracy,
            "seconds": run.dgms_seconds,
            "packed_ratio": run.report.ratio,
        }
        print(
            f"DGMS {bits}-bit (K={k}): hard accuracy {run.dgms_accuracy:.4f} "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
        modes = ("float", *INT8_MODES) if bits == args.bits[0] else ("float", "codebook_int8")
        for mode in modes:
            exports.append(export_one(f"k{k}_{mode}", k, mode, model, hardened=run.hardened, **kw))
            print(f"  exported k{k}_{mode} ({time.perf_counter() - start:.0f}s)", flush=True)

    k_main = 2 ** args.bits[0]
    timed = [e for e in exports if e.k is None or (e.k == k_main)]
    if save_dir is not None:
        atomic_write_json(
            save_dir / "manifest.json",
            {e.name: {"K": e.k, "mode": e.mode, "bytes": e.result.size.raw} for e in exports},
        )
    latency, pinned = time_models(
        {e.name: e.result.data for e in timed},
        data.x_test[:1],
        invocations=args.invocations,
        warmup=args.warmup,
        rounds=args.rounds,
        core=args.core,
    )
    # Latency rows are keyed like the targets: "<model>_fp32", "k16_<mode>".
    targets = evaluate_targets(exports, latency, k_main)
    machine = cpu_label()
    env = environment()
    versions = {"tensorflow": _tf_version(), "ai_edge_litert": _litert_version()}

    sizes, parity, codes, ops = (
        size_rows(exports),
        parity_rows(exports),
        code_rows(exports),
        op_rows(exports),
    )
    print()
    print(
        f"{args.model} on digits ({len(data.x_train)} train / {len(data.x_test)} test, parity "
        f"on {n_test}), FP {args.fp_epochs} epochs, DGMS {args.epochs} epochs; "
        f"jax {env['jax']}, tensorflow {versions['tensorflow']}, "
        f"ai-edge-litert {versions['ai_edge_litert']}"
    )
    print("\n== sizes (bytes; ratios = fp32 .tflite / this) ==")
    print(format_table(sizes))
    print("\n== parity in LiteRT (test set, batch 1; export()'s reports) ==")
    print(format_table(parity))
    print(
        "\n== distinct stored values per DGMS tensor: tensor/most in one channel ('!' = not kept) =="
    )
    print(format_table(codes))
    print("\n== ops ==")
    print(format_table(ops))
    print(
        f"\n== LiteRT latency, batch 1, 1 thread, pinned core {pinned}: "
        f"{machine['arch_label']} ({machine['machine']}, {machine['cpu_model']}) =="
    )
    print(format_table(latency))
    print("\n== targets ==")
    if args.smoke:
        print("(smoke run: a small CNN after 1 DGMS epoch; the targets are for the full run)")
    for name, t in targets.items():
        print(f"target {name}: {'MET' if t['met'] else 'MISSED'} ({t})")
    total = time.perf_counter() - start
    print(f"total {total:.0f}s")
    if args.out:
        write_results(
            args.out,
            name="bench_tflite",
            rows=sizes,
            smoke=args.smoke,
            machine=machine,
            versions=versions,
            pinned_core=pinned,
            settings={
                "model": args.model,
                "bits": args.bits,
                "fp_recipe": dataclasses.asdict(fp_recipe),
                "dgms_recipe": dataclasses.asdict(dgms_recipe),
                "n_test": n_test,
                "calibration_images": calibration,
                "invocations": args.invocations,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "seed": args.seed,
            },
            training=training,
            parity=parity,
            codes=codes,
            ops=ops,
            latency=latency,
            targets=targets,
            exports=[export_record(e) for e in exports],
            seconds=total,
        )
    return 0


def _tf_version() -> str:
    import tensorflow as tf

    return str(tf.__version__)


if __name__ == "__main__":
    raise SystemExit(main())
