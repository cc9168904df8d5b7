"""`jgraph export-tflite`: a `jgraph quant train` run to a checked .tflite file."""

from __future__ import annotations

import argparse
from pathlib import Path

from jgraph.cli._args import (
    EXIT_FAILED,
    EXIT_OK,
    LibraryChoices,
    existing_dir,
    flag_error,
    int_in,
    output_file,
    probe_output_file,
)


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "export a DGMS run (jgraph quant train --out DIR) to .tflite, checked in LiteRT"
    p = sub.add_parser("export-tflite", help=help_, description=help_)
    p.set_defaults(handler=run)
    p.add_argument("--run", type=existing_dir, required=True, help="the run's --out folder")
    p.add_argument("--out", type=output_file, required=True, help="destination .tflite file")
    p.add_argument(
        "--mode",
        choices=LibraryChoices("tflite_export", "MODES"),
        default="codebook_int8",
        metavar="MODE",
        help="float, codebook_int8 (<= K int8 codes per DGMS tensor; default), or the "
        "baselines dynamic_int8 / full_int8 (calibrated on the run's training images)",
    )
    # A phone runs one image at a time; larger fixed batches are for servers and tests.
    p.add_argument("--batch", type=int_in(1, 4096, "fixed batch size"), default=1)
    p.add_argument("--signature", default="serving_default", help="the signature's name")
    p.add_argument(
        "--no-verify", action="store_true", help="skip running the file in LiteRT against JAX"
    )


def run(args: argparse.Namespace) -> int:
    probe_output_file(args.out, "--out")
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    import tflite_export
    from jgraph.core import ConfigError, atomic_write_json
    from jgraph.quant.recipes import MODEL_NAMES, load_dataset, load_run, make_model

    try:
        config = tflite_export.ExportConfig(
            mode=args.mode, signature=args.signature, verify="skip" if args.no_verify else "raise"
        )
    except ConfigError as exc:
        raise flag_error("--signature", str(exc)) from None
    try:
        saved = load_run(args.run)
    except ConfigError as exc:
        raise flag_error("--run", str(exc)) from None
    if saved.model not in MODEL_NAMES:
        raise flag_error(
            "--run",
            f"{args.run} was trained with your own model ({saved.model}); export it from Python: "
            "tflite_export.export(model, example_args, hardened=load_run(dir).hardened)",
        )
    data = load_dataset(saved.data)
    if args.batch > len(data.x_test):
        raise flag_error("--batch", f"{args.batch} is more than the {len(data.x_test)} test images")
    model = make_model(saved.model, saved.num_classes)
    example = np.zeros((args.batch, *saved.input_shape), np.float32)
    try:
        res = tflite_export.export(
            model,
            (example,),
            config,
            hardened=saved.hardened,
            apply_kwargs={"train": False},
            representative_data=data.x_train if args.mode == "full_int8" else None,
            # Cut into --batch sized sets; a last partial set is left out.
            data=None if args.no_verify else data.x_test,
            labels=None if args.no_verify else data.y_test,
            path=args.out,
        )
    except tflite_export.ParityError as exc:
        Console(stderr=True).print(f"[red]parity check failed[/]: {exc}")
        return EXIT_FAILED
    report = atomic_write_json(Path(f"{args.out}.json"), res.as_dict())
    console = Console(soft_wrap=True)
    table = Table(title=f"{saved.model}, K = {2**saved.bits}, {args.mode}", show_header=False)
    size = res.size
    rows = [
        ("ops", " ".join(f"{op}x{n}" for op, n in res.model.op_counts.items())),
        ("size raw / gzip -9", f"{size.raw:,} B / {size.gzip:,} B"),
        ("DGMS packed (theoretical)", f"{size.packed:,} B (float32 model {size.fp32_params:,} B)"),
    ]
    p = res.trained_parity or res.parity
    if p is not None:
        rows.append(("max |tflite - jax|", f"{p.max_abs_error:.3g}"))
        if p.top1_agreement is not None:
            rows.append(
                (
                    "top-1 agreement / accuracy",
                    f"{100 * p.top1_agreement:.2f}% / {100 * (p.tflite_accuracy or 0):.2f}% "
                    f"(JAX hard model {100 * (p.jax_accuracy or 0):.2f}%, {p.samples} batches)",
                )
            )
    for c in res.codebooks:
        rows.append(
            (
                f"{c.layer}",
                f"{c.stored}: {c.distinct} distinct (<= {c.distinct_per_channel} per channel), "
                f"K = {c.k}" + (f"; {c.note}" if c.note else ""),
            )
        )
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    console.print(f"wrote {args.out} and {report}")
    return EXIT_OK
