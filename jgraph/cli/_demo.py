"""`jgraph demo`: render the tour's outcomes (the parts run in `jgraph._demo`)."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from jgraph._version import __version__
from jgraph.cli._args import EXIT_FAILED, EXIT_OK, LibraryChoices, make_output_dir, output_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="CPU tour of the four subsystems",
        description="CPU tour of the four subsystems",
    )
    p.set_defaults(handler=run)
    p.add_argument(
        "--only",
        action="append",
        choices=LibraryChoices("jgraph._demo", "part_names"),
        metavar="PART",
        help="run only this part (repeatable): %(choices)s",
    )
    p.add_argument(
        "--out", type=output_dir, help="folder for artifacts (default: a new temp folder)"
    )


def run(args: argparse.Namespace) -> int:
    if args.out is not None:
        make_output_dir(args.out, "--out")
    import jax

    # The pipeline part trains on 8 devices: ask for 8 fake CPU devices before JAX
    # starts (an accelerator backend keeps its own devices; other parts use one).
    with contextlib.suppress(RuntimeError):  # the backend already started: keep its devices
        jax.config.update("jax_num_cpu_devices", 8)
    from rich.console import Console
    from rich.table import Table

    from jgraph._demo import run_demo

    console = Console(soft_wrap=True)  # paths must stay copy-pasteable in logs
    console.print(
        f"[bold]jgraph {__version__}[/] demo on jax {jax.__version__}, "
        f"backend {jax.default_backend()} ({len(jax.devices())} device(s))"
    )
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="jgraph-demo-"))
    outcomes = run_demo(out_dir, only=args.only or ())
    failed = False
    for o in outcomes:
        console.rule(f"{o.part.title} [dim]({o.part.name})[/]")
        if o.status == "not_built":
            console.print(f"not built yet: {o.part.issue}")
        elif o.status == "failed" or o.report is None:
            failed = True
            console.print(f"[red]FAILED[/] after {o.seconds:.1f}s: {o.error}")
        else:
            console.print(f"{o.report.headline} [dim]({o.seconds:.1f}s)[/]")
            if o.report.rows:
                table = Table(show_header=False, box=None, padding=(0, 2))
                for label, value in o.report.rows:
                    table.add_row(label, value)
                console.print(table)
            for path in o.report.artifacts:
                console.print(f"  wrote {path}")
    built = sum(o.status == "ok" for o in outcomes)
    console.print(f"\n{built}/{len(outcomes)} parts ran; artifacts under {out_dir}")
    return EXIT_FAILED if failed else EXIT_OK
