"""Datasets: bundled digits, a user's .npz and a user's image folder (generated here)."""

import re

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
            r"obj\.npz:x='an array of Python objects': is not a plain numeric array",
        ),
        (_folder_with_a_broken_image, r"broken\.png'?: is not a readable image"),
    ],
    ids=["missing", "wrong-keys", "one-class", "not-a-zip", "pickled", "broken-image"],
)
def test_bad_data_errors(tmp_path, make, match):
    with pytest.raises(ConfigError, match=match):
        quant.recipes.load_dataset(make(tmp_path))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


_RNG = np.random.default_rng(0)
_IMAGES = _RNG.random((20, 4, 4)).astype(np.float32)
_LABELS = np.arange(20) % 2
_NAN = _IMAGES.copy()
_NAN[3, 1, 1] = np.nan
_NAN[7] = np.inf

# (arrays in the .npz, the field the error names, what it says about the value, the fix)
BAD_ARRAYS = {
    "strings": (
        {"x": np.array(["img"] * 20), "y": _LABELS},
        ":x",
        r"array of dtype <U3'?: holds no numbers",
        "uint8 or float array",
    ),
    "scalar": ({"x": np.float32(3.0), "y": _LABELS}, ":x", r"shape \(\)", "reshape"),
    "string-labels": (
        {"x": _IMAGES, "y": np.array(["a", "b"] * 10)},
        ":y",
        "must be \\[n\\] integer class labels",
        "one int label per image",
    ),
    "fractional-labels": (
        {"x": _IMAGES, "y": _LABELS + 0.5},
        ":y",
        "label 0.5 at index 0'?: is not a whole number",
        "integer class labels",
    ),
    "negative-labels": (
        {"x": _IMAGES, "y": _LABELS - 1},
        ":y",
        "label -1 .*is negative",
        "0..classes-1",
    ),
    "count-mismatch-xy": (
        {"x": _IMAGES, "y": _LABELS[:17]},
        ":y",
        "17 labels for 20 images.*counts differ",
        "exactly one label",
    ),
    "count-mismatch-train": (
        {"x_train": _IMAGES, "y_train": _LABELS[:18], "x_test": _IMAGES[:6], "y_test": _LABELS[:6]},
        ":y_train",
        "18 labels for 20 images",
        "exactly one label",
    ),
    "count-mismatch-test": (
        {"x_train": _IMAGES, "y_train": _LABELS, "x_test": _IMAGES[:6], "y_test": _LABELS[:9]},
        ":y_test",
        "9 labels for 6 images",
        "exactly one label",
    ),
    "empty": (
        {"x": np.zeros((0, 4, 4), np.float32), "y": np.zeros(0, np.int64)},
        ":x",
        r"shape \(0, 4, 4, 1\)'?: holds no images",
        "at least one image",
    ),
    "empty-test": (
        {"x_train": _IMAGES, "y_train": _LABELS, "x_test": _IMAGES[:0], "y_test": _LABELS[:0]},
        ":x_test",
        "holds no images",
        "at least one image",
    ),
    "nan": (
        {"x": _NAN, "y": _LABELS},
        ":x",
        r"2 of 20 images with NaN or inf values \(first: image 3\)",
        "drop or repair",
    ),
    "all-nan": (
        {"x": np.full((20, 4, 4), np.nan, np.float32), "y": _LABELS},
        ":x",
        "20 of 20 images with NaN",
        "drop or repair",
    ),
    "test-shape": (
        {
            "x_train": _IMAGES,
            "y_train": _LABELS,
            "x_test": _RNG.random((6, 5, 5)),
            "y_test": _LABELS[:6],
        },
        ":x_test",
        r"images of shape \(5, 5, 1\)'?: differ from the training images' \(4, 4, 1\)",
        "same [h, w, c]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_are_refused_naming_the_field(tmp_path, case):
    arrays, field, problem, fix = BAD_ARRAYS[case]
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError) as info:
        quant.recipes.load_dataset(path)
    err = info.value
    assert err.field.startswith(str(path)), err
    assert err.field.endswith(field) or f"{field} (" in err.field, err
    assert re.search(problem, str(err)), err
    assert fix in err.fix, err


def test_check_examples_accepts_good_arrays_and_column_labels():
    x, y = quant.training.check_examples(
        _IMAGES, _LABELS[:, None].astype(np.float64), x_field="x", y_field="y"
    )
    assert y.dtype == np.int32
    assert y.shape == (20,)
    np.testing.assert_array_equal(y, _LABELS)
    assert x is not None


def test_training_refuses_bad_arrays_passed_directly():
    # The public training helpers take raw arrays, so they check them too.
    from jgraph.quant.training import evaluate, linen_apply

    apply = linen_apply(quant.recipes.make_model("mlp", 2))
    with pytest.raises(ConfigError, match="y='3 labels for 20 images"):
        evaluate(apply, {}, _IMAGES[..., None], _LABELS[:3])
    nan = _IMAGES[..., None].copy()
    nan[5] = np.nan
    with pytest.raises(ConfigError, match="x='1 of 20 images with NaN"):
        evaluate(apply, {}, nan, _LABELS)
