"""Accuracy vs bits for DGMS on bundled data: FP32, then K = 16, 8, 4 (b = 4, 3, 2).

For each seed the full-precision model is trained once; every bit width starts
from it. Per bit width the script reports the k-means-only baseline (cluster
the pretrained weights, no training), the same baseline after BatchNorm
re-estimation with the hard weights (so the DGMS gain is not confused with the
BN fix), and DGMS (hard weights after training), each as mean ± std over
seeds, with sparsity, the paper's CR = 32 / (b (1 - s)) and the honest
whole-model compression (packed indices + codebooks + full-precision layers).

    python scripts/bench_quant.py                 # the full run (~12 min on 2 busy CPU cores)
    python scripts/bench_quant.py --smoke         # CI: tiny model and epochs, 1 seed
    python scripts/bench_quant.py --out results.json

Targets (issue #6): 4-bit within 0.3 point of FP32, 2-bit within 1.5 points,
DGMS above the k-means-only baseline at 2 bits. The script prints whether each
is met; it never adjusts numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from pathlib import Path

from jgraph import quant
from jgraph.core import format_table, write_results


def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI (<= 60 s)")
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument("--model", default="resnet20", choices=("resnet20", "cnn", "mlp"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fp-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10, help="DGMS epochs per bit width")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.smoke:
        args.model, args.seeds, args.fp_epochs, args.epochs, args.bits = "cnn", 1, 3, 1, [2]

    data = quant.recipes.load_dataset("digits")
    fp_recipe = quant.recipes.Recipe(
        epochs=args.fp_epochs, optimizer="sgd", lr=0.1, weight_decay=5e-4
    )
    dgms_recipe = quant.recipes.Recipe(epochs=args.epochs)
    fp_acc: list[float] = []
    per_bits: dict[int, dict[str, list[float]]] = {
        b: {k: [] for k in ("kmeans", "kmeans_bn", "dgms", "sparsity", "paper_cr", "ratio", "sec")}
        for b in args.bits
    }
    start = time.perf_counter()
    for seed in range(args.seeds):
        fp_vars = None
        for bits in args.bits:
            cfg = quant.recipes.RunConfig(
                model=args.model,
                seed=seed,
                fp=fp_recipe,
                dgms=dgms_recipe,
                quant=quant.DGMSConfig(bits=bits),
                plots=False,
            )
            r = quant.recipes.run_recipe(cfg, data=data, fp_variables=fp_vars)
            if fp_vars is None:
                fp_vars = r.fp_variables
                fp_acc.append(r.fp_accuracy)
            row = per_bits[bits]
            row["kmeans"].append(r.kmeans_accuracy)
            row["kmeans_bn"].append(r.kmeans_bn_accuracy)
            row["dgms"].append(r.dgms_accuracy)
            row["sparsity"].append(r.report.sparsity)
            row["paper_cr"].append(r.report.paper_cr)
            row["ratio"].append(r.report.ratio)
            row["sec"].append(r.dgms_seconds)
            print(
                f"seed {seed} {bits}-bit: fp {r.fp_accuracy:.4f} kmeans {r.kmeans_accuracy:.4f} "
                f"kmeans+bn {r.kmeans_bn_accuracy:.4f} dgms {r.dgms_accuracy:.4f} "
                f"({time.perf_counter() - start:.0f}s)",
                flush=True,
            )

    fp_mean, fp_std = _stats(fp_acc)
    rows = [
        {
            "setting": "FP32",
            "K": "-",
            "acc_mean_%": 100 * fp_mean,
            "acc_std": 100 * fp_std,
            "delta_vs_fp": 0.0,
            "sparsity_%": 0.0,
            "paper_CR": 1.0,
            "packed_ratio": 1.0,
        }
    ]
    for bits in args.bits:
        row = per_bits[bits]
        for name, key in (
            ("k-means only", "kmeans"),
            ("k-means + BN", "kmeans_bn"),
            ("DGMS", "dgms"),
        ):
            mean, std = _stats(row[key])
            rows.append(
                {
                    "setting": f"{name} {bits}-bit",
                    "K": 2**bits,
                    "acc_mean_%": 100 * mean,
                    "acc_std": 100 * std,
                    "delta_vs_fp": 100 * (mean - fp_mean),
                    # k-means rows share the initial assignment; sparsity/CR are DGMS's
                    "sparsity_%": 100 * statistics.fmean(row["sparsity"]) if key == "dgms" else "",
                    "paper_CR": statistics.fmean(row["paper_cr"]) if key == "dgms" else "",
                    "packed_ratio": statistics.fmean(row["ratio"]) if key == "dgms" else "",
                }
            )
    print()
    print(
        f"{args.model} on digits ({len(data.x_train)} train / {len(data.x_test)} test), "
        f"{args.seeds} seed(s), FP {args.fp_epochs} epochs, DGMS {args.epochs} epochs per bit width"
    )
    print(format_table(rows))
    targets = {}
    if 4 in per_bits:
        gap = 100 * (fp_mean - statistics.fmean(per_bits[4]["dgms"]))
        targets["4bit_within_0.3pt"] = {"gap_pt": gap, "met": gap <= 0.3}
    if 2 in per_bits:
        gap = 100 * (fp_mean - statistics.fmean(per_bits[2]["dgms"]))
        targets["2bit_within_1.5pt"] = {"gap_pt": gap, "met": gap <= 1.5}
        win = 100 * (
            statistics.fmean(per_bits[2]["dgms"]) - statistics.fmean(per_bits[2]["kmeans"])
        )
        targets["2bit_dgms_beats_kmeans"] = {"margin_pt": win, "met": win > 0}
    print()
    for name, t in targets.items():
        print(f"target {name}: {'MET' if t['met'] else 'MISSED'} ({t})")
    print(f"total {time.perf_counter() - start:.0f}s")
    if args.out:
        write_results(
            args.out,
            name="bench_quant",
            rows=rows,
            smoke=args.smoke,
            targets=targets,
            settings={
                "model": args.model,
                "seeds": args.seeds,
                "bits": args.bits,
                "fp_recipe": dataclasses.asdict(fp_recipe),
                "dgms_recipe": dataclasses.asdict(dgms_recipe),
            },
            per_seed={"fp": fp_acc, **{str(b): v for b, v in per_bits.items()}},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
