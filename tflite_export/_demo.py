"""The `jgraph demo` part for TFLite: the demo's 2-bit DGMS CNN, exported and run in LiteRT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jgraph.core import DemoReport, atomic_write_json
from jgraph.quant.recipes import RunResult
from tflite_export._config import ExportConfig
from tflite_export._export import ExportResult, export

__all__ = ["demo"]


def _train() -> tuple[Any, Any, RunResult]:
    """The quant demo's 2-bit run (same data, recipes and seed, so the same model)."""
    from jgraph.quant import DGMSConfig
    from jgraph.quant.recipes import Recipe, RunConfig, load_dataset, make_model, run_recipe

    data = load_dataset("digits")
    run = run_recipe(
        RunConfig(
            model="cnn",
            seed=0,
            fp=Recipe(epochs=4, optimizer="sgd", lr=0.1, weight_decay=5e-4),
            dgms=Recipe(epochs=2),
            quant=DGMSConfig(bits=2),
            out=None,
            checkpoint=False,
        ),
        data=data,
    )
    return data, make_model("cnn", data.num_classes), run


def demo(out_dir: Path) -> DemoReport:
    """Trains the 2-bit digits CNN (~20 s), exports it three ways and checks each in LiteRT.

    Writes ``fp32.tflite`` (the full-precision model), ``dgms_float.tflite``,
    ``dgms_codebook_int8.tflite`` and ``summary.json`` under ``out_dir``.

    Args:
        out_dir: destination folder.

    Returns:
        A `DemoReport`: parity, sizes and the distinct int8 codes per DGMS layer.
    """
    data, model, run = _train()
    assert run.hardened is not None
    x1 = data.x_test[:1]
    kw: dict[str, Any] = {
        "apply_kwargs": {"train": False},
        "data": data.x_test,
        "labels": data.y_test,
    }
    results: dict[str, ExportResult] = {
        "fp32": export(
            model, (x1,), variables=run.fp_variables, path=out_dir / "fp32.tflite", **kw
        ),
        "dgms_float": export(
            model, (x1,), hardened=run.hardened, path=out_dir / "dgms_float.tflite", **kw
        ),
        "dgms_codebook_int8": export(
            model,
            (x1,),
            ExportConfig(mode="codebook_int8"),
            hardened=run.hardened,
            path=out_dir / "dgms_codebook_int8.tflite",
            **kw,
        ),
    }
    summary = {name: r.as_dict() for name, r in results.items()}
    artifacts = [r.path for r in results.values() if r.path is not None]
    artifacts.append(atomic_write_json(out_dir / "summary.json", summary))
    fp, fl, cb = results["fp32"], results["dgms_float"], results["dgms_codebook_int8"]
    # Agreement with the model as trained (unsnapped codebooks), not only the exported one.
    cbp = cb.trained_parity
    assert fp.parity is not None
    assert fl.parity is not None
    assert cbp is not None
    codes = ", ".join(
        f"{c.layer} {c.distinct}" if c.stored == "INT8" else f"{c.layer} float"
        for c in cb.codebooks
    )
    rows = (
        ("model / data", f"2-bit DGMS CNN (K=4) on sklearn digits, {len(data.x_test)} test images"),
        ("ops", " ".join(cb.ops)),
        (
            "float parity",
            f"max |tflite - jax| {fl.parity.max_abs_error:.1e} (tolerance "
            f"{fl.config.atol:g} + {fl.config.rtol:g}|x|), FP32 model {fp.parity.max_abs_error:.1e}",
        ),
        (
            "codebook int8",
            f"top-1 agreement {100 * (cbp.top1_agreement or 0):.1f}%, accuracy "
            f"{100 * (cbp.tflite_accuracy or 0):.2f}% (JAX hard model "
            f"{100 * (cbp.jax_accuracy or 0):.2f}%)",
        ),
        ("int8 codes per DGMS tensor", f"{codes} (K = 4)"),
        (
            "sizes raw / gzip -9",
            f"FP32 {fp.size.raw:,} / {fp.size.gzip:,} B; DGMS float {fl.size.raw:,} / "
            f"{fl.size.gzip:,} B; codebook int8 {cb.size.raw:,} / {cb.size.gzip:,} B; "
            f"packed 2-bit {cb.size.packed:,} B",
        ),
    )
    headline = (
        f"2-bit DGMS CNN in LiteRT: codebook-int8 .tflite {fp.size.gzip / cb.size.gzip:.1f}x "
        f"smaller than FP32 after gzip, {100 * (cbp.top1_agreement or 0):.1f}% top-1 "
        f"agreement with JAX, at most {max(c.distinct for c in cb.codebooks if c.stored == 'INT8')}"
        " int8 codes per DGMS tensor"
    )
    return DemoReport(headline=headline, rows=rows, artifacts=tuple(artifacts))
