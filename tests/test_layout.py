"""Architecture rules that code review would otherwise have to remember.

* `core` imports nothing else from jgraph; siblings never import each other's
  private modules (what two of them share moves to `core`).
* Nothing heavy at import time: TensorFlow, jax-triton and torch are imported
  only inside functions.
* Library code never prints (ruff's T20 enforces it; this checks the config).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("pipeline", "superopt", "coserve", "quant")
HEAVY = ("tensorflow", "jax_triton", "torch")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_top_level) for each import statement in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_core_imports_nothing_else_from_jgraph():
    for path in _files("jgraph/core"):
        for module, _ in _imports(path):
            # jgraph._version is a leaf (one constant), so core may read it.
            if module.startswith("jgraph") and module != "jgraph._version":
                assert module.startswith("jgraph.core"), (
                    f"{path.relative_to(REPO)} imports {module}"
                )


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_no_sibling_private_imports(sub):
    for path in _files(f"jgraph/{sub}"):
        for module, _ in _imports(path):
            parts = module.split(".")
            if parts[0] == "jgraph" and len(parts) > 2 and parts[1] != sub:
                assert not any(p.startswith("_") for p in parts[2:]), (
                    f"{path.relative_to(REPO)} imports private {module}: use the public "
                    f"jgraph.{parts[1]} API, or move the shared piece to jgraph.core"
                )


def test_heavy_dependencies_only_inside_functions():
    for package in ("jgraph", "tflite_export"):
        for path in _files(package):
            for module, top in _imports(path):
                if module.split(".")[0] in HEAVY:
                    assert not top, f"{path.relative_to(REPO)} imports {module} at module level"


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
API_LIMITS = {"core": 19, "pipeline": 15, "quant": 17, "coserve": 17, "superopt": 17}


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
