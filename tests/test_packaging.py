"""The wheel ships what users import, declares what the README promises, and nothing more."""

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("jgraph-*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_wheel_ships_both_top_level_packages(wheel):
    names = set(wheel.namelist())
    for module in (
        "jgraph/__init__.py",
        "jgraph/cli/__init__.py",
        "jgraph/core/__init__.py",
        "jgraph/testing/__init__.py",
        "tflite_export/__init__.py",
    ):
        assert module in names
    for sub in ("pipeline", "superopt", "coserve", "quant"):
        assert f"jgraph/{sub}/__init__.py" in names
    assert not any(n.startswith(("tests/", "scripts/", ".ci/")) for n in names)


def test_console_script(wheel):
    (name,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "jgraph = jgraph.cli:main" in wheel.read(name).decode()


def test_dependencies_and_extras(wheel):
    meta = _metadata(wheel)
    assert meta["Requires-Python"] == ">=3.11"
    requires = meta.get_all("Requires-Dist")
    runtime = {r.split(">=")[0] for r in requires if "extra ==" not in r}
    assert {"jax", "jaxlib", "numpy", "flax", "optax", "chex", "orbax-checkpoint"} <= runtime
    # Runtime deps carry floors only: an upper pin would fight the GPU image's jax 0.11.
    assert all(
        ">=" in r and "<" not in r.split(";")[0] and "==" not in r
        for r in requires
        if "extra ==" not in r
    )
    assert set(meta.get_all("Provides-Extra")) >= {"tflite", "serve", "gpu", "test", "tfmot", "all"}
    # tfmot brings `tensorflow` over `tensorflow-cpu` and downgrades absl-py: never in `all`.
    assert not any("tfmot" in r.split(";")[0] for r in requires if 'extra == "all"' in r)
    text = "\n".join(requires)
    assert "tensorflow-cpu==2.21.*" in text
    assert "ai-edge-litert==2.3.*" in text
    # litert-converter pulls xdsl, which pins typing-extensions<4.13 and breaks chex.
    assert "litert-converter" not in text
