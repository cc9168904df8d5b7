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

import numpy as np

from jgraph.core import ConfigError

__all__ = ["BUNDLED_DATASETS", "Dataset", "load_dataset"]

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
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ConfigError(
            field, f"array of shape {x.shape}", "must be [n, h, w] or [n, h, w, c]", "reshape it"
        )
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def _finish(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: tuple[str, ...] | None = None,
) -> Dataset:
    mean = x_train.mean(axis=(0, 1, 2), keepdims=True)
    std = x_train.std(axis=(0, 1, 2), keepdims=True) + 1e-6
    n = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(
        name=name,
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=y_train.astype(np.int32),
        x_test=((x_test - mean) / std).astype(np.float32),
        y_test=y_test.astype(np.int32),
        classes=classes or tuple(str(i) for i in range(n)),
    )


def _split(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, classes=None):
    tr, te = _stratified_split(y, test_fraction, seed)
    return _finish(name, x[tr], y[tr], x[te], y[te], classes)


def _digits(test_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    return _split("digits", x, d.target.astype(np.int32), test_fraction, seed)


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


def _npz_arrays(path: Path, test_fraction: float, seed: int) -> Dataset:
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            return _finish(
                path.name,
                _as_images(f["x_train"], f"{path}:x_train"),
                np.asarray(f["y_train"]).astype(np.int32).reshape(-1),
                _as_images(f["x_test"], f"{path}:x_test"),
                np.asarray(f["y_test"]).astype(np.int32).reshape(-1),
            )
        if {"x", "y"} <= keys:
            x = _as_images(f["x"], f"{path}:x")
            y = np.asarray(f["y"]).astype(np.int32).reshape(-1)
            if len(x) != len(y):
                raise ConfigError(
                    str(path),
                    f"{len(x)} images, {len(y)} labels",
                    "x and y differ in length",
                    "fix the file",
                )
            return _split(path.name, x, y, test_fraction, seed)
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
    return _split(root.name, x, y, test_fraction, seed, tuple(d.name for d in class_dirs))


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
