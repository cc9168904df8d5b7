"""End to end: the recipe, its artifacts and the CLI (`jgraph quant train`).

The demo part (`jgraph.quant.demo`) runs in tests/test_demo.py with the whole tour.
"""

import json

import numpy as np
import pytest
from PIL import Image

from jgraph import cli, quant
from jgraph.core import ConfigError


def _tiny(tmp_path, bits=2, **kw):
    return quant.recipes.RunConfig(
        model="mlp",
        fp=quant.recipes.Recipe(epochs=2, batch_size=64),
        dgms=quant.recipes.Recipe(epochs=1, batch_size=64),
        quant=quant.DGMSConfig(bits=bits),
        out=tmp_path,
        **kw,
    )


@pytest.mark.slow  # both training phases end to end
def test_recipe_end_to_end_properties(tmp_path):
    r = quant.recipes.run_recipe(_tiny(tmp_path))
    assert r.fp_accuracy > 0.8  # an MLP learns digits in 2 epochs
    assert r.dgms_accuracy > 0.8
    assert 0.0 <= r.kmeans_accuracy <= 1.0
    assert [layer.name for layer in r.report.layers] == ["fc2"]  # fc1 first, fc3 last
    assert r.report.layers[0].distinct <= 4
    assert 1.0 < r.report.ratio < r.report.paper_cr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["report"]["layers"][0]["bits"] == 2
    assert len(result["history"]["dgms"]) == 1
    assert (tmp_path / "hist" / "fc2.png").read_bytes()[:4] == b"\x89PNG"
    with np.load(tmp_path / "hardened.npz") as f:
        book, idx, packed = f["codebook/fc2"], f["indices/fc2"], f["packed/fc2"]
    assert book.shape == (4,)
    assert book[0] == 0.0
    assert packed.nbytes == idx.size * 2 // 8
    np.testing.assert_array_equal(
        quant.mixture.unpack_indices(packed, 2, idx.size), idx.reshape(-1)
    )
    # resuming a finished run retrains nothing and reproduces the result; the training
    # times are the first process's, read back from the checkpoints (nothing added)
    again = quant.recipes.run_recipe(_tiny(tmp_path, resume=True))
    assert (again.fp_seconds, again.dgms_seconds) == (r.fp_seconds, r.dgms_seconds)
    assert r.fp_seconds > 0
    assert again.dgms_accuracy == r.dgms_accuracy
    # resuming the DGMS phase with other settings is refused, not silently mixed
    with pytest.raises(ConfigError, match="different settings"):
        quant.recipes.run_recipe(_tiny(tmp_path, bits=3, resume=True))


def _images(root):
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(12):
            img = np.zeros((8, 8), np.uint8)
            img[:, c * 2 : c * 2 + 3] = 200 + rng.integers(0, 50)
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")


def test_cli_trains_on_an_image_folder(tmp_path, capsys):
    _images(tmp_path / "imgs")
    argv = ["quant", "train", "--model", "mlp", "--bits", "2", "--data", str(tmp_path / "imgs")]
    argv += [
        "--fp-epochs",
        "3",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(tmp_path / "run"),
    ]
    assert cli.main([*argv, "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "DGMS (hard weights)" in out
    assert "honest compression" in out
    # --no-plots: the artifacts line names what was written, and no histograms
    line = next(ln for ln in out.splitlines() if ln.startswith("artifacts under"))
    assert line == (
        f"artifacts under {tmp_path / 'run'}: hardened.npz, hardened.msgpack, result.json, fp/ (checkpoints), "
        "dgms/ (checkpoints)"
    ), line
    assert not (tmp_path / "run" / "hist").exists()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["config"]["data"] == str(tmp_path / "imgs")
    assert (tmp_path / "run" / "dgms").is_dir()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--data", "/nonexistent/x.npz"], "data='/nonexistent/x.npz': is not 'digits'"),
        (["--layers", "nope"], r"DGMSConfig.layers='nope': selects no layer.*fc1 \(dense\)"),
        (["--bits", "9"], "DGMS uses 1-8 bits"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, match):
    import re

    argv = ["quant", "train", "--model", "mlp", "--fp-epochs", "1", "--epochs", "1"]
    assert cli.main([*argv, "--out", str(tmp_path), "--no-plots", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(match, err), err


def test_artifacts_line_lists_only_what_exists(tmp_path):
    from jgraph.cli._quant import artifacts_line

    (tmp_path / "hist").mkdir()
    pngs = [tmp_path / "hist" / f"{n}.png" for n in ("conv2", "fc1")]
    for p in [*pngs, tmp_path / "result.json"]:
        p.write_bytes(b"x")
    (tmp_path / "dgms").mkdir()
    listed = (*pngs, tmp_path / "result.json", tmp_path / "hardened.npz")  # the npz is missing
    assert artifacts_line(tmp_path, listed) == (
        f"artifacts under {tmp_path}: result.json, hist/*.png (2 histograms), dgms/ (checkpoints)"
    )
    assert artifacts_line(tmp_path / "empty", ()) == f"artifacts under {tmp_path / 'empty'}: none"
