"""One owner per vocabulary: every CLI choice list is the library's own tuple.

The parser is walked as built (every subcommand, every flag with choices), so a
flag that goes back to a hand-kept tuple fails here even if no table below
names it. Building the parser must not import the subsystems (they are read
when a flag is validated or its help printed).
"""

import argparse
import importlib
import subprocess
import sys

import pytest

from jgraph import cli
from jgraph.cli._args import LibraryChoices

# (command path, flag) -> (owner module, name). The CLI's own choices (none are a
# library vocabulary) are listed in CLI_OWNED instead.
OWNERS = {
    (("pipeline",), "--model"): ("jgraph.pipeline.models", "ALL_MODEL_NAMES"),
    (("pipeline",), "--planner"): ("jgraph.pipeline.planners", "PLANNER_NAMES"),
    (("pipeline",), "--schedule"): ("jgraph.pipeline.planners", "SCHEDULE_KINDS"),
    (("superopt", "run"), "--program"): ("jgraph.superopt.programs", "PROGRAMS"),
    (("superopt", "run"), "--backend"): ("jgraph.superopt.config", "BACKENDS"),
    (("superopt", "run"), "--maps"): ("jgraph.superopt.config", "MAP_MODES"),
    (("quant", "train"), "--model"): ("jgraph.quant.recipes", "MODEL_NAMES"),
    (("quant", "train"), "--dataset"): ("jgraph.quant.recipes", "BUNDLED_DATASETS"),
    (("quant", "train"), "--preset"): ("jgraph.quant.recipes", "RECIPE_PRESETS"),
    (("quant", "train"), "--init"): ("jgraph.quant.recipes", "INIT_METHODS"),
    (("demo",), "--only"): ("jgraph._demo", "part_names"),
    (("export-tflite",), "--mode"): ("tflite_export", "MODES"),
}
# `jgraph pipeline [plan]`: the subcommand's own action word.
CLI_OWNED = {(("pipeline",), "action")}


def _choice_actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Yields (command path, flag or dest, action) for every action with choices."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _choice_actions(sub, (*path, name))
        elif action.choices is not None:
            yield path, (action.option_strings[0] if action.option_strings else action.dest), action


def _hand_kept(parser: argparse.ArgumentParser) -> list[str]:
    """Flags whose choices are not read from the library and not the CLI's own."""
    return [
        f"jgraph {' '.join(path)} {flag}"
        for path, flag, action in _choice_actions(parser)
        if not isinstance(action.choices, LibraryChoices) and (path, flag) not in CLI_OWNED
    ]


def test_every_choice_list_is_read_from_the_library():
    assert _hand_kept(cli._build_parser()) == []


def test_a_hand_kept_choice_list_is_caught():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers().add_parser("pipeline")
    sub.add_argument("--model", choices=("mmt", "dlrm"))
    sub.add_argument(
        "--planner", choices=LibraryChoices("jgraph.pipeline.planners", "X"), metavar="P"
    )
    assert _hand_kept(parser) == ["jgraph pipeline --model"]


@pytest.mark.parametrize(("where", "flag"), sorted(OWNERS))
def test_each_choice_list_is_its_owners_tuple(where, flag):
    actions = {(path, f): a for path, f, a in _choice_actions(cli._build_parser())}
    choices = actions[(where, flag)].choices
    module, name = OWNERS[(where, flag)]
    assert (choices.module, choices.name) == (module, name)
    owned = getattr(importlib.import_module(module), name)
    owned = owned() if callable(owned) else owned
    assert tuple(choices) == tuple(owned)
    assert owned
    assert all(isinstance(v, str) for v in owned)


def test_every_choice_flag_has_an_owner_listed():
    found = {(path, flag) for path, flag, _ in _choice_actions(cli._build_parser())}
    assert found == set(OWNERS) | CLI_OWNED


def test_every_library_vocabulary_the_cli_reads_resolves():
    # Flags that take a name or a path (jgraph serve --model) read a vocabulary without
    # `choices=`; every module-level LibraryChoices of the CLI must name a real tuple.
    from jgraph.cli import _demo, _export, _pipeline, _quant, _serve, _superopt

    found = [
        value
        for module in (_demo, _export, _pipeline, _quant, _serve, _superopt)
        for value in vars(module).values()
        if isinstance(value, LibraryChoices)
    ]
    assert len(found) >= 11
    for choices in found:
        assert len(choices) > 0, choices
        assert all(isinstance(v, str) for v in choices), choices
    from jgraph.coserve.model import MODEL_PRESETS

    assert tuple(_serve.PRESETS) == MODEL_PRESETS


def test_a_value_outside_the_library_list_is_refused(capsys):
    assert cli.main(["quant", "train", "--init", "uniform"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'uniform'" in err
    assert "'kmeans', 'empirical'" in err


def test_building_the_parser_imports_no_subsystem():
    code = (
        "import sys\n"
        "from jgraph.cli import _build_parser\n"
        "_build_parser()\n"
        "mods = ('jax', 'flax', 'matplotlib', 'egglog', 'jgraph.pipeline', 'jgraph.superopt',\n"
        "        'jgraph.coserve', 'jgraph.quant', 'tflite_export')\n"
        "print(sorted(m for m in mods if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
