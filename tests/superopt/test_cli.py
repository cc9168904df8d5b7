"""`jgraph superopt run`."""

import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgraph.cli import main
from jgraph.superopt import SearchConfig, evaluate
from jgraph.superopt.config import BACKENDS, MAP_MODES, SMEM_BUDGET
from jgraph.superopt.programs import PROGRAMS, get_program
from jgraph.testing import assert_trees_close


def test_run_prints_the_best_mugraph_and_its_cost(tmp_path, capsys):
    code = main(["superopt", "run", "--program", "rmsnorm_linear", "--batch", "1", "--scale", "16",
                 "--time-limit", "30", "--max-kernel-ops", "1", "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "pruning breakdown" in out
    assert "abstract_expression" in out
    assert "customized(t0, t1)" in out
    assert "model speedup over XLA" in out
    assert (tmp_path / "rmsnorm_linear_best.png").stat().st_size > 1000
    assert (tmp_path / "rmsnorm_linear_result.json").exists()


def test_zero_time_limit_is_a_one_line_usage_error(capsys):
    code = main(["superopt", "run", "--program", "gqa", "--time-limit", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--time-limit" in err
    assert "must be a finite number > 0" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_program_is_a_usage_error(capsys):
    assert main(["superopt", "run", "--program", "bert"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_heuristic_switches_reach_the_search_config(capsys):
    code = main(["superopt", "run", "--program", "rmsnorm_linear", "--batch", "1", "--scale", "16",
                 "--time-limit", "30", "--max-kernel-ops", "1", "--sizes-per-mapping", "0",
                 "--no-live-operand-rule"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    # with the live-operand rule off, nothing is pruned by it
    assert "live_operand" in out
    row = next(line for line in out.splitlines() if line.startswith("live_operand"))
    assert row.split()[-1] == "0"


def test_negative_sizes_per_mapping_is_a_usage_error(capsys):
    code = main(["superopt", "run", "--program", "gqa", "--sizes-per-mapping", "-1"])
    assert code == 2
    assert "--sizes-per-mapping" in capsys.readouterr().err


# -- one owner per vocabulary: the CLI's choices are the library's --------------------


def test_choices_are_the_library_vocabularies(capsys):
    assert main(["superopt", "run", "--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split())  # argparse may wrap the help
    assert f"--program NAME one of {', '.join(PROGRAMS)}" in usage
    assert f"--maps MODE {', '.join(MAP_MODES)}" in usage
    assert f"--backend NAME shared-memory budget of {', '.join(BACKENDS)}" in usage


class _StopSearchError(Exception):
    pass


def _config_of(monkeypatch, *flags):
    """The SearchConfig `jgraph superopt run` builds from these flags (the search is stubbed)."""
    import jgraph.superopt

    seen = {}

    def fake_search(graph, *, config, **kwargs):
        seen["config"] = config
        raise _StopSearchError

    monkeypatch.setattr(jgraph.superopt, "search", fake_search)
    with pytest.raises(_StopSearchError):
        main(["superopt", "run", "--program", "gqa", "--scale", "16", *flags])
    return seen["config"]


def test_left_out_flags_keep_the_library_defaults(monkeypatch):
    assert _config_of(monkeypatch) == SearchConfig()


def test_given_flags_reach_the_search_config(monkeypatch):
    from jgraph.superopt import VerifyConfig

    got = _config_of(monkeypatch, "--maps", "mirage", "--backend", "cuda", "--tests", "5",
                     "--max-kernel-ops", "2", "--time-limit", "7", "--sizes-per-mapping", "0")  # fmt: skip
    want = SearchConfig(maps="mirage", backend="cuda", verify=VerifyConfig(tests=5),
                        max_kernel_ops=2, time_limit_s=7.0, sizes_per_mapping=0)  # fmt: skip
    assert got == want != SearchConfig()


def test_no_fusion_reaches_the_search_config(monkeypatch):
    assert _config_of(monkeypatch, "--no-fusion") == SearchConfig(fusion=False)
    assert SearchConfig().fusion


def test_vocabularies_have_one_source_in_the_library():
    hints = typing.get_type_hints(SearchConfig)
    assert typing.get_args(hints["backend"]) == BACKENDS == tuple(SMEM_BUDGET)
    assert typing.get_args(hints["maps"]) == MAP_MODES
    for backend in BACKENDS:
        assert SearchConfig(backend=backend).smem_budget == SMEM_BUDGET[backend]


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_listed_program_builds(name):
    prog = get_program(name, scale=16)
    assert prog.name == name
    assert tuple(s.shape for s in prog.graph.validate().inputs) == prog.shapes
    xs = [np.random.default_rng(0).standard_normal(s) * 0.5 for s in prog.shapes]
    with jax.enable_x64(True):
        want = np.asarray(prog.fn(*[jnp.asarray(x) for x in xs]))
    assert_trees_close(evaluate(prog.graph, xs)[0], want, kind="forward")
