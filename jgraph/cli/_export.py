"""`jgraph export-tflite`: export a DGMS checkpoint to .tflite."""

from __future__ import annotations

import argparse

from jgraph.cli._args import existing_dir, not_built, output_file, probe_output_file


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "export a DGMS checkpoint to .tflite"
    p = sub.add_parser("export-tflite", help=help_, description=help_)
    p.set_defaults(handler=run)
    p.add_argument("--checkpoint", type=existing_dir, required=True)
    p.add_argument("--out", type=output_file, required=True, help="destination .tflite file")


def run(args: argparse.Namespace) -> int:
    probe_output_file(args.out, "--out")
    return not_built("TFLite export", "a later issue")
