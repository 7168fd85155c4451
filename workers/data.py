"""Datasets: built-in ``digits`` and ``synthetic``, ``package.module:loader`` specs, validation.

Contract (docs/DESIGN.md): a loader is ``loader() -> (x_train, y_train, x_test, y_test)`` as numpy
arrays. ``validate`` turns them into a ``Dataset`` (float32 features, int64 labels) or raises
``DataError`` saying what is wrong: empty sets, NaN/inf features, labels out of range.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workers.errors import DataError
from workers.spec_import import import_spec_module

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
DataLoader = Callable[[], Arrays]
DIGITS_SPLIT_SEED = 20240101  # fixed: the digits split never depends on the training seed


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """Validated arrays: ``x_*`` float32 (n, features) C-contiguous, ``y_*`` int64 (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def in_features(self) -> int:
        """Number of input features per sample."""
        return int(self.x_train.shape[1])

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    def arrays(self) -> Arrays:
        """``(x_train, y_train, x_test, y_test)``, as a loader returns them (no copies)."""
        return self.x_train, self.y_train, self.x_test, self.y_test


def load_digits() -> Arrays:
    """scikit-learn's bundled 8×8 digits: a fixed 80/20 split, standardized by train stats.

    Each pixel is centred by its train mean and divided by its train std floored at 1.0 (one
    intensity level of 16), so near-constant border pixels are not blown up into outliers.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    cut = round(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.maximum(std, 1.0)
    xs = ((x - mean) / std).astype(np.float32)
    return xs[train], y[train], xs[test], y[test]


def synthetic(
    features: int = 784, classes: int = 10, n_train: int = 8192, n_test: int = 2048,
    seed: int = 0,
) -> Arrays:
    """Gaussian class clusters, deterministic from ``seed``: any size, e.g. 784 × 10."""
    if features < 1 or classes < 2 or n_train < 1 or n_test < 1:
        raise DataError(
            "synthetic data needs features >= 1, classes >= 2, n_train >= 1, n_test >= 1"
        )
    rng = np.random.default_rng([seed, features, classes])
    centers = rng.normal(0.0, 1.0, size=(classes, features)) * (3.0 / np.sqrt(features))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, size=n)
        x = centers[labels] + rng.normal(0.0, 1.0, size=(n, features)) / np.sqrt(features)
        return x.astype(np.float32), labels.astype(np.int64)

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return x_train, y_train, x_test, y_test


def _parse_synthetic(spec: str) -> DataLoader:
    _, _, sizes = spec.partition(":")
    if not sizes:
        return synthetic
    try:
        parts = [int(p) for p in sizes.split("x")]
    except ValueError:
        parts = []
    if not 2 <= len(parts) <= 4:
        raise DataError(
            f"bad synthetic spec {spec!r}: use 'synthetic' or "
            "'synthetic:FEATURESxCLASSES[xTRAIN[xTEST]]', e.g. synthetic:784x10x8192"
        )
    names = ("features", "classes", "n_train", "n_test")
    return functools.partial(synthetic, **dict(zip(names, parts, strict=False)))


def resolve_data(spec: str | DataLoader) -> DataLoader:
    """Turn ``digits``/``synthetic[:FxC[xN[xM]]]``/``pkg.mod:loader`` or a callable into one."""
    if callable(spec):
        return spec
    if spec == "digits":
        return load_digits
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _parse_synthetic(spec)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DataError(
            f"unknown data {spec!r}: use digits, synthetic or 'package.module:loader'"
        )
    module = import_spec_module(module_name, f"loader {spec!r}", DataError)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DataError(f"module {module_name!r} has no callable loader named {attr!r}")
    return fn  # type: ignore[no-any-return]


def _features(name: str, x: object) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise DataError(f"{name} must be 2-D (samples, features), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {arr.shape}); the loader must return samples")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(
            f"{name} has {int(bad.sum())} NaN/inf values (first in row {row}); "
            "clean or impute the features before training"
        )
    return out


def _labels(name: str, y: object, n: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{name} must be 1-D with {n} labels to match the features, "
                        f"got shape {arr.shape}")
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.mod(arr, 1) == 0)))
    if not integral:
        raise DataError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def validate(arrays: object) -> Dataset:
    """Check a loader's output and normalize dtypes; raises ``DataError``; mutates nothing."""
    if not isinstance(arrays, tuple | list) or len(arrays) != 4:
        raise DataError("a data loader must return (x_train, y_train, x_test, y_test)")
    x_train = _features("x_train", arrays[0])
    x_test = _features("x_test", arrays[2])
    if x_test.shape[1] != x_train.shape[1]:
        raise DataError(f"x_test has {x_test.shape[1]} features but x_train has "
                        f"{x_train.shape[1]}; both must have the same columns")
    y_train = _labels("y_train", arrays[1], x_train.shape[0])
    y_test = _labels("y_test", arrays[3], x_test.shape[0])
    if y_train.min() < 0 or y_test.min() < 0:
        raise DataError("labels must be class ids >= 0; found a negative label")
    num_classes = int(y_train.max()) + 1
    if num_classes < 2:
        raise DataError("y_train holds a single class; classification needs >= 2 classes")
    if int(y_test.max()) >= num_classes:
        raise DataError(
            f"y_test has label {int(y_test.max())} but y_train only has classes "
            f"0..{num_classes - 1}; labels out of range"
        )
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   num_classes=num_classes)


def load(spec: str | DataLoader) -> Dataset:
    """Resolve, call and validate a loader; any loader exception propagates unchanged."""
    return validate(resolve_data(spec)())
