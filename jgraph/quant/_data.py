"""Image-classification datasets for the recipes, all offline.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images).
* a user's ``.npz``: arrays ``x_train, y_train, x_test, y_test`` or ``x, y``
  (then split here); images [n, h, w] or [n, h, w, c], uint8 (scaled by 1/255)
  or float.
* a user's folder of images: one sub-folder per class (``root/cat/001.png``),
  read with Pillow; every image is resized to the first image's size.

Images come back float32 [n, h, w, c], standardized with the training set's
per-channel mean and std; labels int32 [n]. Splits are stratified and fixed
(``split_seed``), so every training seed sees the same test set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from jgraph.core import ConfigError

__all__ = ["BUNDLED_DATASETS", "Dataset", "check_examples", "load_dataset"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Dataset:
    """A train/test split of images and labels.

    Attributes:
        name: where it came from.
        x_train: float32 [n_train, h, w, c], standardized.
        y_train: int32 [n_train].
        x_test: float32 [n_test, h, w, c], standardized with the train statistics.
        y_test: int32 [n_test].
        classes: class names; label i is ``classes[i]``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = round(len(idx) * test_fraction)
        if len(idx) > 1:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _as_images(x: np.ndarray, field: str) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ConfigError(
            field,
            f"array of dtype {x.dtype}",
            "holds no numbers",
            "store the images as a uint8 or float array",
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ConfigError(
            field, f"array of shape {x.shape}", "must be [n, h, w] or [n, h, w, c]", "reshape it"
        )
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def _as_labels(y: np.ndarray, field: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    numeric = np.issubdtype(y.dtype, np.number) and not np.issubdtype(y.dtype, np.complexfloating)
    if y.ndim != 1 or not numeric:
        raise ConfigError(
            field,
            f"array of shape {y.shape} and dtype {y.dtype}",
            "must be [n] integer class labels",
            "store one int label per image (one-hot labels: take argmax over the class axis)",
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        bad = ~(np.isfinite(y) & (np.round(y) == y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(
                field,
                f"label {y[i].item()!r} at index {i}",
                "is not a whole number",
                "store integer class labels 0..classes-1",
            )
    return y.astype(np.int64)


def check_examples(
    x: np.ndarray, y: np.ndarray, *, x_field: str, y_field: str
) -> tuple[np.ndarray, np.ndarray]:
    """Refuses images and labels that a training run cannot use.

    Catches what otherwise fails late or silently: a count mismatch (an
    IndexError mid-epoch), an empty split (a division by zero), NaN or inf
    pixels (training runs to a NaN loss and still "succeeds") and negative
    labels (cross-entropy of a class that does not exist).

    Args:
        x: images [n, ...], numeric.
        y: labels [n], integer-valued.
        x_field: how the error names ``x`` (e.g. ``"data.npz:x_train"``).
        y_field: how the error names ``y``.

    Returns:
        ``(x, y)`` as numpy arrays, ``y`` as int32.

    Raises:
        ConfigError: naming the field, the offending value and the fix.
    """
    x, y = np.asarray(x), _as_labels(y, y_field)
    if x.ndim == 0 or len(x) == 0:
        raise ConfigError(
            x_field, f"array of shape {x.shape}", "holds no images", "give it at least one image"
        )
    if len(x) != len(y):
        raise ConfigError(
            y_field,
            f"{len(y)} labels for {len(x)} images in {x_field}",
            "the image and label counts differ",
            "give every image exactly one label",
        )
    if np.issubdtype(x.dtype, np.inexact):
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise ConfigError(
                x_field,
                f"{int(bad.sum())} of {len(x)} images with NaN or inf values "
                f"(first: image {int(np.flatnonzero(bad)[0])})",
                "images must be finite (a NaN trains every weight to NaN)",
                "drop or repair those images",
            )
    if y.min() < 0:
        raise ConfigError(
            y_field,
            f"label {int(y.min())} at index {int(np.argmin(y))}",
            "is negative",
            "use class labels 0..classes-1",
        )
    if y.max() >= 2**31:
        raise ConfigError(
            y_field, f"label {int(y.max())}", "does not fit in int32", "use labels 0..classes-1"
        )
    return x, y.astype(np.int32)


def _finish(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    fields: tuple[str, str, str, str],
    classes: tuple[str, ...] | None = None,
) -> Dataset:
    """Validates both splits (`check_examples`), then standardizes with the train statistics."""
    x_train, y_train = check_examples(*train, x_field=fields[0], y_field=fields[1])
    x_test, y_test = check_examples(*test, x_field=fields[2], y_field=fields[3])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(
            fields[2],
            f"images of shape {x_test.shape[1:]}",
            f"differ from the training images' {x_train.shape[1:]}",
            "store both splits at the same [h, w, c]",
        )
    mean = x_train.mean(axis=(0, 1, 2), keepdims=True)
    std = x_train.std(axis=(0, 1, 2), keepdims=True) + 1e-6
    n = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(
        name=name,
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=y_train,
        x_test=((x_test - mean) / std).astype(np.float32),
        y_test=y_test,
        classes=classes or tuple(str(i) for i in range(n)),
    )


def _split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    test_fraction: float,
    seed: int,
    fields: tuple[str, str],
    classes: tuple[str, ...] | None = None,
) -> Dataset:
    x, y = check_examples(x, y, x_field=fields[0], y_field=fields[1])
    if len(x) < 2:
        raise ConfigError(
            fields[0], f"{len(x)} image", "cannot be split into train and test", "add images"
        )
    tr, te = _stratified_split(y, test_fraction, seed)
    fx, fy = fields
    return _finish(
        name,
        (x[tr], y[tr]),
        (x[te], y[te]),
        (f"{fx} (train split)", f"{fy} (train split)", f"{fx} (test split)", f"{fy} (test split)"),
        classes,
    )


def _digits(test_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    return _split("digits", x, d.target, test_fraction, seed, ("digits:x", "digits:y"))


_BUNDLED = {"digits": _digits}
BUNDLED_DATASETS: tuple[str, ...] = tuple(_BUNDLED)
"""Datasets that ship inside installed packages (no download), by `load_dataset` name."""


def _npz(path: Path, test_fraction: float, seed: int) -> Dataset:
    import zipfile

    try:
        return _npz_arrays(path, test_fraction, seed)
    except ConfigError:  # a readable archive with the wrong arrays: already named
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        # Not an archive, a truncated one, or a member that is not a plain array
        # (pickled objects are refused: allow_pickle=False).
        raise ConfigError(
            "data",
            str(path),
            f"is not a readable .npz archive ({type(exc).__name__}: {str(exc)[:80]})",
            "pass a file written by numpy.savez with x_train, y_train, x_test, y_test (or x, y)",
        ) from None


def _member(f: Any, path: Path, key: str) -> np.ndarray:
    try:
        return f[key]
    except ValueError:  # allow_pickle=False refuses object arrays
        raise ConfigError(
            f"{path}:{key}",
            "an array of Python objects",
            "is not a plain numeric array (numpy stores objects pickled, which is not loaded)",
            "save numbers: numpy.savez(path, x=images.astype('float32'), y=labels.astype('int64'))",
        ) from None


def _npz_arrays(path: Path, test_fraction: float, seed: int) -> Dataset:
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            names = ("x_train", "y_train", "x_test", "y_test")
            fields = tuple(f"{path}:{k}" for k in names)
            x_tr, y_tr, x_te, y_te = (_member(f, path, k) for k in names)
            return _finish(
                path.name,
                (_as_images(x_tr, fields[0]), y_tr),
                (_as_images(x_te, fields[2]), y_te),
                (fields[0], fields[1], fields[2], fields[3]),
            )
        if {"x", "y"} <= keys:
            x = _as_images(_member(f, path, "x"), f"{path}:x")
            y = _member(f, path, "y")
            return _split(path.name, x, y, test_fraction, seed, (f"{path}:x", f"{path}:y"))
    raise ConfigError(
        "data",
        str(path),
        f"has arrays {sorted(keys)}",
        "save x_train, y_train, x_test, y_test (or x, y) with numpy.savez",
    )


def _folder(root: Path, test_fraction: float, seed: int) -> Dataset:
    from PIL import Image

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    files = [
        (label, f)
        for label, d in enumerate(class_dirs)
        for f in sorted(d.iterdir())
        if f.suffix.lower() in _IMAGE_SUFFIXES
    ]
    if len(class_dirs) < 2 or not files:
        raise ConfigError(
            "data",
            str(root),
            f"has {len(class_dirs)} class folder(s) and {len(files)} image(s)",
            "use one sub-folder per class (at least 2) holding .png/.jpg images",
        )
    images = []
    for _, f in files:
        try:
            im = Image.open(f)
            im.load()
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise ConfigError(
                "data",
                str(f),
                f"is not a readable image ({type(exc).__name__})",
                "remove or re-save the file",
            ) from None
        images.append(im)
    mode = "L" if all(im.mode in ("L", "1", "I;16", "I") for im in images) else "RGB"
    size = images[0].size
    arrays = [np.asarray(im.convert(mode).resize(size), np.float32) / 255.0 for im in images]
    x = _as_images(np.stack(arrays), str(root))
    y = np.asarray([label for label, _ in files], np.int32)
    classes = tuple(d.name for d in class_dirs)
    return _split(root.name, x, y, test_fraction, seed, (str(root), str(root)), classes)


def load_dataset(
    source: str | Path, *, test_fraction: float = 0.25, split_seed: int = 0
) -> Dataset:
    """Loads ``"digits"``, an ``.npz`` file or a folder of class sub-folders.

    Args:
        source: ``"digits"`` or a path.
        test_fraction: share held out for testing when the source has no split.
        split_seed: seed of the stratified split (fixed across training seeds).

    Returns:
        A standardized `Dataset`.

    Raises:
        ConfigError: the path does not exist or holds no usable data.

    Example:
        >>> d = load_dataset("digits")
        >>> d.x_train.shape[1:], d.num_classes, len(d.x_train) + len(d.x_test)
        ((8, 8, 1), 10, 1797)
    """
    if str(source) in BUNDLED_DATASETS:
        return _BUNDLED[str(source)](test_fraction, split_seed)
    path = Path(source)
    if path.is_dir():
        return _folder(path, test_fraction, split_seed)
    if path.is_file() and path.suffix == ".npz":
        return _npz(path, test_fraction, split_seed)
    raise ConfigError(
        "data",
        str(source),
        "is not 'digits', an existing .npz file or a folder of class sub-folders",
        "pass --dataset digits or --data PATH to a .npz or an image folder",
    )
