"""The `jgraph demo` part for DGMS: a small CNN on digits, FP32 vs 4-bit and 2-bit."""

from __future__ import annotations

from pathlib import Path

from jgraph.core import DemoReport, atomic_write_json
from jgraph.quant._config import DGMSConfig, Recipe
from jgraph.quant._data import load_dataset
from jgraph.quant._recipe import RunConfig, run_recipe

__all__ = ["demo"]


def demo(out_dir: Path) -> DemoReport:
    """Trains a small CNN on bundled digits, then 4-bit and 2-bit DGMS from it (~30 s on CPU).

    Writes ``quant/<b>bit/`` run folders (histogram PNGs before/after,
    ``hardened.npz`` with codebooks and b-bit indices, ``result.json``) and
    ``summary.json``.

    Args:
        out_dir: destination folder.

    Returns:
        A `DemoReport` with the accuracies and compression ratios.
    """
    data = load_dataset("digits")
    fp = Recipe(epochs=4, optimizer="sgd", lr=0.1, weight_decay=5e-4)
    dg = Recipe(epochs=2)
    results = {}
    fp_vars = None
    artifacts: list[Path] = []
    for bits in (4, 2):
        cfg = RunConfig(
            model="cnn",
            seed=0,
            fp=fp,
            dgms=dg,
            quant=DGMSConfig(bits=bits),
            out=out_dir / f"{bits}bit",
            checkpoint=False,  # a demo has nothing to resume; saves a few seconds
        )
        r = run_recipe(cfg, data=data, fp_variables=fp_vars)
        fp_vars = r.fp_variables
        results[bits] = r
        artifacts += [p for p in r.artifacts if p.suffix in (".png", ".json")]
    fp_acc = results[4].fp_accuracy
    summary = {
        "fp_accuracy": fp_acc,
        **{
            f"{b}bit": {
                "dgms_accuracy": r.dgms_accuracy,
                "kmeans_only_accuracy": r.kmeans_accuracy,
                "sparsity": r.report.sparsity,
                "paper_cr": r.report.paper_cr,
                "packed_bytes": r.report.packed_bytes,
                "fp32_bytes": r.report.fp32_bytes,
                "ratio": r.report.ratio,
            }
            for b, r in results.items()
        },
    }
    artifacts.append(atomic_write_json(out_dir / "summary.json", summary))
    r2, r4 = results[2], results[4]
    rows = (
        ("model / data", f"3-conv CNN on sklearn digits ({len(data.x_test)} test images)"),
        ("FP32 accuracy", f"{100 * fp_acc:.2f}%"),
        (
            "4-bit DGMS (K=16)",
            f"{100 * r4.dgms_accuracy:.2f}%  (k-means only {100 * r4.kmeans_accuracy:.2f}%)",
        ),
        (
            "2-bit DGMS (K=4)",
            f"{100 * r2.dgms_accuracy:.2f}%  (k-means only {100 * r2.kmeans_accuracy:.2f}%)",
        ),
        (
            "2-bit compression",
            f"sparsity {100 * r2.report.sparsity:.0f}%, paper CR {r2.report.paper_cr:.1f}x, "
            f"packed {r2.report.packed_bytes} B vs {r2.report.fp32_bytes} B FP32 "
            f"({r2.report.ratio:.1f}x incl. codebooks and FP first/last layers)",
        ),
        ("histograms", str(out_dir / "2bit" / "hist")),
    )
    headline = (
        f"2-bit DGMS keeps {100 * r2.dgms_accuracy:.1f}% accuracy (FP32 {100 * fp_acc:.1f}%, "
        f"k-means alone {100 * r2.kmeans_accuracy:.1f}%) at {r2.report.ratio:.1f}x smaller"
    )
    return DemoReport(headline=headline, rows=rows, artifacts=tuple(artifacts))
