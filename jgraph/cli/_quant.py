"""`jgraph quant train`: full precision, then DGMS, then harden; prints the results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jgraph.cli._args import (
    EXIT_OK,
    LibraryChoices,
    Parser,
    bits,
    flag_error,
    int_in,
    make_output_dir,
    non_empty,
    output_dir,
    positive_float,
    regex,
)

# The library owns these names; LibraryChoices imports jgraph.quant only when a flag needs them.
MODELS = LibraryChoices("jgraph.quant.recipes", "MODEL_NAMES")
DATASETS = LibraryChoices("jgraph.quant.recipes", "BUNDLED_DATASETS")
PRESETS = LibraryChoices("jgraph.quant.recipes", "RECIPE_PRESETS")
INITS = LibraryChoices("jgraph.quant.recipes", "INIT_METHODS")

# Upper bounds. A step's memory follows the batch (capped at the training set's size,
# so it bites on large image folders); 4096 is far above the recipes' 64-128. Epochs
# cost time only (steps are counted in int32); 10000 is far beyond any recipe.
_EPOCHS = int_in(1, 10_000, "time grows with it; the recipes use 15-30")
_BATCH_SIZE = int_in(1, 4096, "a step's memory grows with it; the recipes use 64-128")
_SEED = int_in(0, 2**32 - 1, "seeds are 32-bit")


def _data(text: str) -> Path:
    """``--data``: a path; what it holds is `load_dataset`'s check (run before any training)."""
    return Path(non_empty(text))


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "DGMS weight sharing"
    p = sub.add_parser("quant", help=help_, description=help_)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)
    train = actions.add_parser(
        "train",
        help="train full precision, then DGMS",
        description="Train full precision, then DGMS; harden to a b-bit codebook + indices; "
        "write checkpoints, histograms, hardened.npz and result.json under --out.",
    )
    train.set_defaults(handler=run)
    train.add_argument(
        "--model", choices=MODELS, metavar="MODEL", default="resnet20", help="one of %(choices)s"
    )
    train.add_argument("--bits", type=bits, default=4, help="index bits b; K = 2**b (1-8)")
    train.add_argument(
        "--dataset",
        choices=DATASETS,
        metavar="NAME",
        default="digits",
        help="bundled dataset: %(choices)s",
    )
    train.add_argument(
        "--data",
        type=_data,
        help="your own data instead of --dataset: a .npz (x_train/y_train/x_test/y_test or "
        "x/y) or a folder with one sub-folder of images per class",
    )
    train.add_argument("--seed", type=_SEED, default=0)
    train.add_argument("--fp-epochs", type=_EPOCHS, default=30)
    train.add_argument("--epochs", type=_EPOCHS, default=15, help="DGMS epochs")
    train.add_argument("--batch-size", type=_BATCH_SIZE, default=64)
    train.add_argument(
        "--preset",
        choices=PRESETS,
        metavar="PRESET",
        default="jgraph",
        help="DGMS recipe (%(choices)s): 'original' = the released code (SGD 0.9, lr 2e-5 "
        "one-cycle, wd 5e-4 on everything, no BN re-estimation); 'jgraph' = Adam with the improvements",
    )
    train.add_argument("--lr", type=positive_float, help="DGMS peak lr (preset default)")
    train.add_argument("--fp-lr", type=positive_float, default=0.1, help="FP peak lr (SGD)")
    train.add_argument(
        "--init", choices=INITS, metavar="METHOD", default="kmeans", help="one of %(choices)s"
    )
    train.add_argument("--tau0", type=positive_float, default=0.01)
    train.add_argument("--tau-start", type=positive_float, help="anneal τ from this value")
    train.add_argument(
        "--layers",
        type=regex,
        help="regex of module paths to quantize (default: all but first/last)",
    )
    train.add_argument(
        "--exclude", type=regex, help="regex of module paths to keep in full precision"
    )
    train.add_argument(
        "--no-bn-reestimate",
        action="store_true",
        help="keep BatchNorm statistics from soft-weight training",
    )
    train.add_argument("--no-plots", action="store_true", help="skip the histogram PNGs")
    train.add_argument("--out", type=output_dir, default=Path("runs/quant"), help="run folder")
    train.add_argument("--resume", action="store_true", help="continue from checkpoints in --out")


def run(args: argparse.Namespace) -> int:
    make_output_dir(args.out, "--out")
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from jgraph import quant
    from jgraph.core import ConfigError

    fp = quant.recipes.Recipe(
        epochs=args.fp_epochs,
        batch_size=args.batch_size,
        optimizer="sgd",
        lr=args.fp_lr,
        weight_decay=5e-4,
    )
    dg = quant.recipes.Recipe.preset(args.preset, epochs=args.epochs, batch_size=args.batch_size)
    overrides: dict[str, Any] = {}
    if args.lr is not None:
        overrides["lr"] = args.lr
    if args.tau_start is not None:
        overrides["tau_start"] = args.tau_start
    if args.no_bn_reestimate:
        overrides["bn_reestimate"] = False
    dg = dataclasses.replace(dg, **overrides)
    config = quant.recipes.RunConfig(
        model=args.model,
        data=args.data if args.data is not None else args.dataset,
        seed=args.seed,
        fp=fp,
        dgms=dg,
        quant=quant.DGMSConfig(
            bits=args.bits,
            layers=args.layers,
            exclude=args.exclude,
            init=args.init,
            tau0=args.tau0,
        ),
        out=args.out,
        resume=args.resume,
        plots=not args.no_plots,
    )
    try:  # the loader owns what a data source may hold; the CLI names the flag
        data = quant.recipes.load_dataset(config.data)
    except ConfigError as exc:
        flag = "--data" if args.data is not None else "--dataset"
        raise flag_error(flag, str(exc)) from None
    result = quant.recipes.run_recipe(config, data=data)
    r = result.report
    console = Console(soft_wrap=True)
    table = Table(title=f"{args.model}, {args.bits}-bit DGMS on {config.data}", show_header=False)
    for label, value in (
        ("full-precision accuracy", f"{100 * result.fp_accuracy:.2f}%"),
        ("k-means only (no training)", f"{100 * result.kmeans_accuracy:.2f}%"),
        ("DGMS (hard weights)", f"{100 * result.dgms_accuracy:.2f}%"),
        ("quantized layers / weights", f"{len(r.layers)} / {r.quantized_weights}"),
        ("sparsity (zero component)", f"{100 * r.sparsity:.1f}%"),
        ("paper CR 32/(b(1-s))", f"{r.paper_cr:.1f}x"),
        ("packed size (with codebooks, FP layers)", f"{r.packed_bytes} B of {r.fp32_bytes} B FP32"),
        ("honest compression", f"{r.ratio:.2f}x"),
    ):
        table.add_row(label, value)
    console.print(table)
    console.print(artifacts_line(args.out, result.artifacts))
    return EXIT_OK


def artifacts_line(out: Path, files: tuple[Path, ...]) -> str:
    """What the run left under ``out``: only files and checkpoint folders that exist."""
    present = [p for p in files if p.exists()]
    plots = [p for p in present if p.suffix == ".png"]
    names = [str(p.relative_to(out)) for p in present if p.suffix != ".png"]
    for folder in sorted({p.parent for p in plots}):
        count = sum(p.parent == folder for p in plots)
        names.append(f"{folder.relative_to(out)}/*.png ({count} histogram{'s' * (count != 1)})")
    names += [f"{d}/ (checkpoints)" for d in ("fp", "dgms") if (out / d).is_dir()]
    return f"artifacts under {out}: {', '.join(names) if names else 'none'}"
