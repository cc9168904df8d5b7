"""Architecture rules that code review would otherwise have to remember.

Checked over every Python file of `jgraph/` (the subsystems, `core`, `testing`,
`cli`), `tflite_export/` and `scripts/`, with relative imports resolved and
``importlib.import_module("...")`` / ``LibraryChoices("...", ...)`` strings read
as imports:

* The dependency rule (style.md c.1): `core` imports nothing else from jgraph;
  `testing` only `core`; each subsystem (pipeline, superopt, coserve, quant)
  only itself and `core`, never another subsystem (public or private), `testing`,
  the CLI or `tflite_export`. What two subsystems share moves to `core`.
* Private modules stay private: ``a.b._c`` may be imported only from inside the
  package ``a.b``. The CLI, scripts and `tflite_export` use public names only
  (tests may reach into private modules to test them).
* Nothing heavy at import time: TensorFlow, jax-triton, Triton and torch are
  imported only inside functions.
* Library code never prints (ruff's T20 enforces it; this checks the config).
"""

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("pipeline", "superopt", "coserve", "quant")
HEAVY = ("tensorflow", "jax_triton", "torch", "triton")
# What the layout rules walk; tests/ is left out on purpose (tests may import private modules).
CHECKED_ROOTS = ("jgraph", "tflite_export", "scripts")
# Calls whose first string argument names a module that will be imported.
_IMPORTING_CALLS = ("import_module", "LibraryChoices")


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    top_level: bool  # a module-level statement (runs at import time)
    line: int


def _module_name(path: Path, root: Path) -> str:
    """Dotted name of a file under ``root`` (``scripts/x.py`` -> ``scripts.x``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = REPO) -> list[Import]:
    """Every import in a file, relative ones resolved against the file's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(a.name, id(node) in top, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import name` may import a module (`from jgraph import quant`), so each
            # name is checked as `pkg.name`; for a class or function that is pkg's own layer.
            found += [
                Import(f"{module}.{a.name}", id(node) in top, node.lineno) for a in node.names
            ]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0] if node.args else None
            if called in _IMPORTING_CALLS and isinstance(arg, ast.Constant):
                found.append(Import(str(arg.value), False, node.lineno))
    return found


def _files(root: Path = REPO) -> list[Path]:
    return sorted(p for r in CHECKED_ROOTS for p in (root / r).rglob("*.py"))


def _layer(module: str) -> str:
    """The first-level name under jgraph ('core', 'cli', 'pipeline', '_demo', ...), 'jgraph'
    for the root package itself, 'tflite_export', or 'other' (not ours)."""
    parts = module.split(".")
    if parts[0] == "tflite_export":
        return "tflite_export"
    if parts[0] != "jgraph":
        return "other"
    return parts[1] if len(parts) > 1 else "jgraph"


# Which jgraph layers each layer may import. `jgraph` (its __init__) and `_version` are
# leaves that import nothing else, so anyone may read them.
_LEAVES = {"jgraph", "_version"}
_ALLOWED = {
    "core": {"core", *_LEAVES},
    "testing": {"core", "testing", *_LEAVES},
    **{sub: {"core", sub, *_LEAVES} for sub in SUBPACKAGES},
}


def layout_violations(root: Path = REPO) -> list[str]:
    """Every broken layout rule under ``root``, one message each (empty when clean)."""
    problems = []
    for path in _files(root):
        where = _module_name(path, root)
        layer = _layer(where)
        for imp in _imports(path, root):
            target = _layer(imp.module)
            if target == "other":
                continue
            at = f"{path.relative_to(root)}:{imp.line} imports {imp.module}"
            if layer in _ALLOWED and target not in _ALLOWED[layer]:
                allowed = sorted(_ALLOWED[layer] - _LEAVES)
                problems.append(
                    f"{at}: jgraph.{layer} may depend only on {allowed}; "
                    "move what is shared to jgraph.core"
                )
                continue
            parts = imp.module.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])
                    if not (where == owner or where.startswith(owner + ".")):
                        problems.append(
                            f"{at}: {part} is private to {owner}; use {owner}'s public API "
                            "(export what is needed there)"
                        )
                    break
    return problems


def test_layout_rules_hold_for_the_whole_tree():
    assert layout_violations() == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# A clean synthetic tree with every allowed kind of import, then one fault added at a time.
_CLEAN = {
    "jgraph/__init__.py": "from jgraph._version import __version__\n",
    "jgraph/_version.py": "__version__ = '0'\n",
    "jgraph/core/__init__.py": "from jgraph.core._io import write\nimport jgraph._version\n",
    "jgraph/core/_io.py": "def write(): ...\n",
    "jgraph/testing/__init__.py": "from jgraph.core import write\nfrom ._tol import TOL\n",
    "jgraph/testing/_tol.py": "TOL = 1\n",
    "jgraph/pipeline/__init__.py": "from ._plan import plan\nfrom jgraph.core import write\n",
    "jgraph/pipeline/_plan.py": "from . import _graph\nfrom jgraph.pipeline._graph import G\n",
    "jgraph/pipeline/_graph.py": "G = 1\n",
    "jgraph/pipeline/models.py": "from ._graph import G\n",
    "jgraph/quant/__init__.py": "from jgraph.quant._gmm import gmm\n",
    "jgraph/quant/_gmm.py": "def gmm(): ...\n",
    "jgraph/cli/__init__.py": "from jgraph.cli import _args\nfrom jgraph._demo import run\n",
    "jgraph/cli/_args.py": (
        "import importlib\nfrom jgraph.pipeline.models import G\n"
        "M = LibraryChoices('jgraph.quant', 'X')\n"
        "def f():\n    return importlib.import_module('jgraph.pipeline.models')\n"
    ),
    "jgraph/_demo.py": "from jgraph.pipeline import plan\nfrom jgraph import quant\n",
    "tflite_export/__init__.py": "from tflite_export._export import export\nimport jgraph.quant\n",
    "tflite_export/_export.py": "def export(): ...\n",
    "scripts/bench.py": "from jgraph.pipeline import plan\nimport numpy\n",
}

_FAULTS = {
    "subsystem imports another's public API": (
        "jgraph/pipeline/_cost.py",
        "from jgraph.quant import gmm\n",
        "jgraph.pipeline may depend only on",
    ),
    "subsystem imports another lazily": (
        "jgraph/quant/_x.py",
        "def f():\n    import jgraph.pipeline.models\n",
        "jgraph.quant may depend only on",
    ),
    "subsystem imports another through the root package": (
        "jgraph/pipeline/_v.py",
        "from jgraph import quant\n",
        "jgraph.pipeline may depend only on",
    ),
    "subsystem imports the demo runner": (
        "jgraph/quant/_d.py",
        "from jgraph._demo import run\n",
        "jgraph.quant may depend only on",
    ),
    "script imports the root package's private module": (
        "scripts/bench3.py",
        "from jgraph._demo import run\n",
        "_demo is private to jgraph",
    ),
    "subsystem imports testing": (
        "jgraph/quant/_y.py",
        "from jgraph.testing import TOL\n",
        "jgraph.quant may depend only on",
    ),
    "core imports a subsystem": (
        "jgraph/core/_z.py",
        "from jgraph.pipeline import plan\n",
        "jgraph.core may depend only on",
    ),
    "subsystem imports the CLI": (
        "jgraph/pipeline/_w.py",
        "from jgraph.cli import _args\n",
        "jgraph.pipeline may depend only on",
    ),
    "CLI imports a subsystem's private module": (
        "jgraph/cli/_pipeline.py",
        "def run():\n    from jgraph.pipeline._plan import plan\n",
        "_plan is private to jgraph.pipeline",
    ),
    "CLI imports a private name as a module": (
        "jgraph/cli/_quant.py",
        "from jgraph.quant import _gmm\n",
        "_gmm is private to jgraph.quant",
    ),
    "CLI reads a private module through importlib": (
        "jgraph/cli/_q.py",
        "import importlib\nm = importlib.import_module('jgraph.quant._gmm')\n",
        "_gmm is private to jgraph.quant",
    ),
    "script imports a private module": (
        "scripts/bench2.py",
        "from jgraph.pipeline._plan import plan\n",
        "_plan is private to jgraph.pipeline",
    ),
    "tflite_export imports a private module": (
        "tflite_export/_q.py",
        "from jgraph.quant._gmm import gmm\n",
        "_gmm is private to jgraph.quant",
    ),
    "relative import into a sibling's private module": (
        "jgraph/quant/_r.py",
        "from .._pipeline_x import y\nfrom ..pipeline import _graph\n",
        "jgraph.quant may depend only on",
    ),
}


def test_synthetic_clean_tree_has_no_violations(tmp_path):
    assert layout_violations(_write(tmp_path, _CLEAN)) == []


@pytest.mark.parametrize("fault", sorted(_FAULTS))
def test_each_fault_in_a_synthetic_tree_is_caught(tmp_path, fault):
    rel, text, message = _FAULTS[fault]
    problems = layout_violations(_write(tmp_path, {**_CLEAN, rel: text}))
    assert problems, f"{fault} was not caught"
    assert all(p.startswith(rel) for p in problems), problems
    assert any(message in p for p in problems), problems


def test_heavy_dependencies_only_inside_functions():
    for package in ("jgraph", "tflite_export"):
        for path in sorted((REPO / package).rglob("*.py")):
            for imp in _imports(path):
                if imp.module.split(".")[0] in HEAVY:
                    assert not imp.top_level, (
                        f"{path.relative_to(REPO)}:{imp.line} imports {imp.module} at module level"
                    )


def test_importing_everything_stays_light():
    code = (
        "import sys, jgraph, jgraph.cli, jgraph.core, jgraph.testing, tflite_export\n"
        + "".join(f"import jgraph.{s}\n" for s in SUBPACKAGES)
        + f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_no_print_rule_is_enforced():
    import tomllib

    lint = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "T20" in lint["select"]
    exempt = {k for k, v in lint["per-file-ignores"].items() if "T20" in v}
    assert exempt == {"scripts/*", "jgraph/cli/*", "tests/*"}


def test_markers_registered_and_strict(pytestconfig):
    markers = {m.split(":")[0] for m in pytestconfig.getini("markers")}
    assert {"slow", "gpu", "tflite", "multiprocess"} <= markers
    assert pytestconfig.getoption("strict_markers")


# style.md c.2: <= ~15 public names per subpackage; the rest lives in public submodules
# (`jgraph.pipeline.models`, `jgraph.coserve.attention`, ...). A ratchet: lower a limit when
# an API is curated, never raise it without a reason written here.
API_LIMITS = {"core": 18, "pipeline": 15, "quant": 17, "coserve": 17, "superopt": 17}


@pytest.mark.parametrize("sub", sorted(API_LIMITS))
def test_public_api_size_does_not_grow(sub):
    tree = ast.parse((REPO / "jgraph" / sub / "__init__.py").read_text())
    names = [
        elt.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
        for elt in node.value.elts
    ]
    assert names, f"jgraph.{sub} has no __all__"
    assert len(names) <= API_LIMITS[sub], (
        f"jgraph.{sub} exports {len(names)} names (limit {API_LIMITS[sub]}): put the new ones in "
        "a public submodule, or curate the list"
    )


@pytest.mark.parametrize("sub", sorted(API_LIMITS))
def test_every_public_submodule_lists_what_it_exports(sub):
    import importlib

    for path in sorted((REPO / "jgraph" / sub).glob("[!_]*.py")):
        mod = importlib.import_module(f"jgraph.{sub}.{path.stem}")
        assert mod.__all__, path
        for name in mod.__all__:
            assert hasattr(mod, name), f"jgraph.{sub}.{path.stem} lists {name} but lacks it"
