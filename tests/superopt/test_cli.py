"""`jgraph superopt run`."""

from jgraph.cli import main


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
