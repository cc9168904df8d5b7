"""`load_run`: a finished run folder gives back the hard model exactly; broken folders are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.quant import DGMSConfig
from jgraph.quant.recipes import Recipe, RunConfig, load_run, make_model, run_recipe


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "run"
    cfg = RunConfig(
        model="mlp",
        fp=Recipe(epochs=1),
        dgms=Recipe(epochs=1),
        quant=DGMSConfig(bits=2),
        out=out,
        plots=False,
    )
    return out, run_recipe(cfg)


def test_load_run_gives_back_the_hard_model(finished) -> None:
    out, result = finished
    saved = load_run(out)
    assert (saved.model, saved.num_classes, saved.input_shape, saved.bits) == (
        "mlp",
        10,
        (8, 8, 1),
        2,
    )
    assert saved.data == "digits"
    assert saved.dgms_accuracy == result.dgms_accuracy
    assert result.hardened is not None
    assert set(saved.hardened.codebooks) == set(result.hardened.codebooks)
    for name, book in result.hardened.codebooks.items():
        np.testing.assert_array_equal(saved.hardened.codebooks[name], book)
        np.testing.assert_array_equal(saved.hardened.indices[name], result.hardened.indices[name])
    model = make_model("mlp", 10)
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        model.apply(saved.hardened.variables, x), model.apply(result.hardened.variables, x)
    )
    assert "hardened" not in result.as_dict()


def test_broken_run_folders_are_refused(finished, tmp_path) -> None:
    out, _ = finished
    with pytest.raises(ConfigError, match=r"no result\.json"):
        load_run(tmp_path)
    (tmp_path / "result.json").write_text((out / "result.json").read_text())
    with pytest.raises(ConfigError, match=r"no hardened\.msgpack"):
        load_run(tmp_path)
    (tmp_path / "hardened.msgpack").write_bytes((out / "hardened.msgpack").read_bytes())
    record = json.loads((out / "result.json").read_text())
    del record["config"]["num_classes"]
    (tmp_path / "result.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="damaged run record"):
        load_run(tmp_path)
