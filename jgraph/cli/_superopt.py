"""`jgraph superopt`: search μGraphs for a tensor program (Mirage).

The flags' choices (programs, backends, map modes) come from the library, which
owns those vocabularies, and a search flag left out keeps `SearchConfig`'s (or
`VerifyConfig`'s) default instead of a copy of it here.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from jgraph.cli._args import (
    EXIT_OK,
    LibraryChoices,
    Parser,
    int_in,
    make_output_dir,
    non_negative_int,
    output_dir,
    positive_float,
)
from jgraph.core import format_table


def _sizes(text: str) -> int:
    return non_negative_int(text, " (0 keeps every size)")


# Upper bounds. The inputs grow linearly with --batch, and verification with them
# (rmsnorm_linear: 17 s and 1.8 GB at batch 8, 78 s and 2.8 GB at 512); the paper uses 1
# and 8. The others are SearchConfig's, VerifyConfig's and get_program's own limits.
_BATCH = int_in(1, 64, "verification time and memory grow with it; the paper uses 1 and 8")
_SCALE = int_in(1, 16, "get_program's limit; 16 already shrinks the 64-wide dims to 4")
_TESTS = int_in(1, 64, "VerifyConfig's limit")
_KERNEL_OPS = int_in(1, 8, "SearchConfig's limit; the space grows exponentially with it")


PROGRAMS = LibraryChoices("jgraph.superopt.programs", "PROGRAMS")
BACKENDS = LibraryChoices("jgraph.superopt.config", "BACKENDS")
MAP_MODES = LibraryChoices("jgraph.superopt.config", "MAP_MODES")


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "search μGraphs for a tensor program (Mirage)"
    p = sub.add_parser("superopt", help=help_, description=help_)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)
    run_p = actions.add_parser(
        "run",
        help="superoptimize a benchmark program",
        description="Superoptimize one of Mirage's benchmark programs and print the best "
        "verified μGraph with its model cost against the XLA candidate.",
    )
    run_p.set_defaults(handler=run)
    run_p.add_argument(
        "--program", choices=PROGRAMS, metavar="NAME", required=True, help="one of %(choices)s"
    )
    run_p.add_argument("--batch", type=_BATCH, default=8)
    run_p.add_argument(
        "--time-limit", type=positive_float, help="seconds (default: SearchConfig's)"
    )
    run_p.add_argument(
        "--scale",
        type=_SCALE,
        default=1,
        help="divide the large dims (1 = the spec's shapes)",
    )
    run_p.add_argument(
        "--maps", choices=MAP_MODES, metavar="MODE", help="%(choices)s (default: SearchConfig's)"
    )
    run_p.add_argument(
        "--backend",
        choices=BACKENDS,
        metavar="NAME",
        help="shared-memory budget of %(choices)s (default: SearchConfig's)",
    )
    run_p.add_argument("--tests", type=_TESTS, help="random field tests (default: VerifyConfig's)")
    run_p.add_argument(
        "--max-kernel-ops", type=_KERNEL_OPS, help="kernel ops per μGraph (default: SearchConfig's)"
    )
    run_p.add_argument(
        "--sizes-per-mapping",
        type=_sizes,
        help="grid/loop sizes kept per map assignment (0 = all; a jgraph heuristic; "
        "default: SearchConfig's)",
    )
    run_p.add_argument(
        "--no-live-operand-rule",
        action="store_true",
        help="also explore ops that read only already-read tensors (the full space)",
    )
    run_p.add_argument(
        "--no-fusion",
        action="store_true",
        help="skip the fusion moves (whole-region/segment kernels): the enumeration alone",
    )
    run_p.add_argument(
        "--out", type=output_dir, default=None, help="folder for the PNG, text and JSON"
    )
    run_p.add_argument(
        "--cache-dir", type=output_dir, default=None, help="reuse/store verified results"
    )


def run(args: argparse.Namespace) -> int:
    for flag, folder in (("--out", args.out), ("--cache-dir", args.cache_dir)):
        if folder is not None:
            make_output_dir(folder, flag)
    from jgraph.core import atomic_write_json, atomic_write_text
    from jgraph.superopt import CacheWarning, SearchConfig, VerifyConfig, draw, dump, search
    from jgraph.superopt.programs import get_program, is_known_good

    given = {
        "time_limit_s": args.time_limit,
        "max_kernel_ops": args.max_kernel_ops,
        "maps": args.maps,
        "backend": args.backend,
        "sizes_per_mapping": args.sizes_per_mapping,
    }
    verify = VerifyConfig() if args.tests is None else VerifyConfig(tests=args.tests)
    config = SearchConfig(
        **{k: v for k, v in given.items() if v is not None},
        require_live_operand=not args.no_live_operand_rule,
        fusion=not args.no_fusion,
        verify=verify,
    )
    prog = get_program(args.program, batch=args.batch, scale=args.scale)
    print(f"superoptimizing {args.program} (batch {args.batch}, inputs {list(prog.shapes)}), "
          f"time limit {config.time_limit_s:g} s")  # fmt: skip
    # A cache that cannot be read or written costs no result: its CacheWarning is one
    # line on stderr and the search's result is printed as usual.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        res = search(prog.graph, config=config, name=args.program, cache_dir=args.cache_dir)
    for w in caught:
        if issubclass(w.category, CacheWarning):
            print(f"jgraph: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    st = res.stats
    print(f"\n{'cached result' if res.from_cache else 'search'}: {st.states} states in "
          f"{st.seconds:.1f} s ({'space exhausted' if st.exhausted else 'stopped at the limit'}), "
          f"{st.verified} verified μGraphs")  # fmt: skip
    print("\npruning breakdown")
    rows = [{"reason": k, "count": v} for k, v in {**st.pruned, **st.rejected}.items()]
    print(format_table(rows))
    best, xla = res.best, res.xla
    print(
        "\nbest μGraph"
        + (" (matches the known-good structure)" if is_known_good(args.program, best.graph) else "")
    )
    print(dump(best.graph))
    print("\ncost (analytic H100 model, not a measurement)")
    table = []
    for label, c in (("best", best), ("xla", xla)):
        table.append({"candidate": label, "kernels": c.cost.launches, "dram_MB": c.cost.dram_bytes / 1e6,
                      "GFLOP": c.cost.flops / 1e9, "smem_KiB": c.cost.smem_bytes / 1024,
                      "model_us": c.cost.estimated_us})  # fmt: skip
    print(format_table(table))
    print(f"model speedup over XLA: {res.model_speedup:.2f}x")
    if any(op.block is not None for op in best.graph.ops):
        from jgraph.superopt.lower import lowering_problem

        problems = {r: lowering_problem(best.graph, route=r) for r in ("triton", "mosaic_gpu")}
        print("CUDA lowering of the best μGraph (jax.export, no GPU needed): " + "; ".join(
            f"{r} {'lowers' if p is None else 'no (' + p + ')'}" for r, p in problems.items()
        ))  # fmt: skip
    if args.out is not None:
        png = draw(
            best.graph, args.out / f"{args.program}_best.png", title=f"best μGraph: {args.program}"
        )
        atomic_write_text(args.out / f"{args.program}_best.txt", dump(best.graph) + "\n")
        atomic_write_json(args.out / f"{args.program}_result.json", res.to_json())
        print(f"wrote {png} and the μGraph as text/JSON in {args.out}")
    return EXIT_OK
