"""Datasets: bundled digits, a user's .npz and a user's image folder (generated here)."""

import numpy as np
import pytest
from PIL import Image

from jgraph import quant
from jgraph.core import ConfigError


def test_digits_split_is_fixed_and_stratified():
    a, b = quant.recipes.load_dataset("digits"), quant.recipes.load_dataset("digits")
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert a.x_train.shape[1:] == (8, 8, 1)
    assert a.x_train.dtype == np.float32
    assert set(np.unique(a.y_test)) == set(range(10))
    assert abs(len(a.x_test) / 1797 - 0.25) < 0.01
    assert abs(float(a.x_train.mean())) < 1e-5  # standardized with train stats


def test_npz_with_split(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (20, 6, 6), dtype=np.uint8),
        y_train=np.arange(20) % 3,
        x_test=rng.integers(0, 256, (9, 6, 6), dtype=np.uint8),
        y_test=np.arange(9) % 3,
    )
    d = quant.recipes.load_dataset(path)
    assert d.x_train.shape == (20, 6, 6, 1)
    assert d.x_test.shape == (9, 6, 6, 1)
    assert d.num_classes == 3
    assert d.y_test.dtype == np.int32


def test_npz_x_y_is_split_here(tmp_path):
    path = tmp_path / "xy.npz"
    np.savez(path, x=np.random.default_rng(0).random((40, 5, 5, 3)), y=np.arange(40) % 4)
    d = quant.recipes.load_dataset(path, test_fraction=0.25)
    assert len(d.x_train) == 32
    assert len(d.x_test) == 8


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (7, 7), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png"
            )
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    d = quant.recipes.load_dataset(tmp_path)
    assert d.classes == ("cat", "dog")
    assert d.x_train.shape[1:] == (7, 7, 1)
    assert len(d.x_train) + len(d.x_test) == 12


def _folder_with_a_broken_image(root):
    for name in ("cat", "dog"):
        (root / name).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / name / "ok.png")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing.npz", "is not 'digits', an existing .npz"),
        (
            lambda p: (np.savez(p / "bad.npz", a=np.zeros(3)), p / "bad.npz")[1],
            r"has arrays \['a'\]",
        ),
        (lambda p: ((p / "only").mkdir(), p)[1], "has 1 class folder"),
        (
            lambda p: ((p / "fake.npz").write_text("not a zip"), p / "fake.npz")[1],
            r"is not a readable \.npz archive",
        ),
        (
            lambda p: (
                np.savez(p / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1)),
                p / "obj.npz",
            )[1],
            r"is not a readable \.npz archive",
        ),
        (_folder_with_a_broken_image, r"broken\.png'?: is not a readable image"),
    ],
    ids=["missing", "wrong-keys", "one-class", "not-a-zip", "pickled", "broken-image"],
)
def test_bad_data_errors(tmp_path, make, match):
    with pytest.raises(ConfigError, match=match):
        quant.recipes.load_dataset(make(tmp_path))
