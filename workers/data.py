"""Datasets: built-in ``digits`` and ``synthetic``, ``package.module:loader`` specs, validation.

Contract (docs/DESIGN.md): a loader is ``loader() -> (x_train, y_train, x_test, y_test)`` as numpy
arrays of any shape ``(n, ...)``. ``validate`` turns them into a ``Dataset`` by the dtype rule
(floats and bools float32, integers int64) or raises ``DataError`` saying what is wrong: empty
sets, mismatched shapes or dtypes, NaN/inf values, non-numeric data.
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
    """Validated arrays, C-contiguous, float32 or int64 (``convert``): ``x_*`` (n, ...),
    ``y_*`` (n, ...). ``num_classes``: the output width a built-in model gets
    (``output_width``)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def in_features(self) -> int:
        """Number of input values per sample (the product of a sample's dimensions)."""
        return int(np.prod(self.x_train.shape[1:], dtype=np.int64))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input sample, ``x_train.shape[1:]``."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    def arrays(self) -> Arrays:
        """``(x_train, y_train, x_test, y_test)``, as a loader returns them (no copies)."""
        return self.x_train, self.y_train, self.x_test, self.y_test

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])

    @property
    def x_dtype(self) -> np.dtype:
        """The features' dtype after the dtype rule (float32 or int64)."""
        return self.x_train.dtype

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample's features and target (sizes evaluation batches)."""
        return int(self.x_train[:1].nbytes + self.y_train[:1].nbytes)

    def first_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The first training sample as a batch of one: ``(x_train[:1], y_train[:1])``."""
        return (np.ascontiguousarray(self.x_train[:1]),
                np.ascontiguousarray(self.y_train[:1]))

    def label_ranges(self) -> dict[str, tuple[int, int]]:
        """Integer targets: ``{"y_train": (min, max), "y_test": (min, max)}``."""
        return {name: (int(y.min()), int(y.max()))
                for name, y in (("y_train", self.y_train), ("y_test", self.y_test))}

    def test_batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Test samples ``[start, stop)`` (views, no copies)."""
        return self.x_test[start:stop], self.y_test[start:stop]


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


def rule_dtype(name: str, dtype: np.dtype) -> np.dtype:
    """The dtype the dtype rule (``convert``) gives ``dtype``: float32 for floating-point and
    bool, int64 for integers; ``DataError`` naming ``name`` for any other dtype."""
    if dtype == np.bool_ or np.issubdtype(dtype, np.floating):
        return np.dtype(np.float32)
    if np.issubdtype(dtype, np.integer):
        return np.dtype(np.int64)
    raise DataError(f"{name} must be numeric (float, integer or bool), got dtype {dtype}")


def convert(name: str, values: object) -> np.ndarray:
    """The dtype rule (docs/DESIGN.md): a C-contiguous array, float32 for any floating-point
    or bool input (bool as 0.0/1.0), int64 for any integer one; ``DataError`` for any other
    dtype, for integers beyond int64, and for NaN/inf floats (naming the first row)."""
    arr = np.asarray(values)
    if rule_dtype(name, arr.dtype) == np.float32:
        with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
            out = np.ascontiguousarray(arr, dtype=np.float32)
        bad = ~np.isfinite(out)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(
                f"{name} has {int(bad.sum())} NaN/inf values (first in row {row}); "
                "clean or impute them before training (float64 values beyond float32's "
                "range become inf)")
        return out
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{name} holds integers beyond int64; they cannot be trained on")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _samples(name: str, values: object, *, min_ndim: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim < min_ndim:
        need = "(samples, features, ...): one feature is (n, 1)" if min_ndim == 2 else \
            "(samples, ...)"
        raise DataError(f"{name} must have shape {need}, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.size == 0:
        raise DataError(f"{name} is empty (shape {arr.shape}); the loader must return samples")
    return convert(name, arr)


def _pair(kind: str, train: np.ndarray, test: np.ndarray) -> None:
    if train.shape[1:] != test.shape[1:]:
        raise DataError(f"{kind}_test has samples of shape {test.shape[1:]} but {kind}_train "
                        f"has {train.shape[1:]}; both must have the same shape per sample")
    if train.dtype != test.dtype:
        raise DataError(f"{kind}_test is {test.dtype} but {kind}_train is {train.dtype} (after "
                        "the dtype rule: floats and bools float32, integers int64); return "
                        "both as floats or both as integers")


def output_width(y_train: np.ndarray, y_test: np.ndarray) -> int:
    """How many outputs a built-in model gets: for integer targets the highest label + 1
    (at least 1), for float targets the values per target (1 for shape (n,))."""
    if y_train.dtype == np.int64:
        return max(int(max(y_train.max(), y_test.max())) + 1, 1)
    return int(np.prod(y_train.shape[1:], dtype=np.int64))


def validate(arrays: object) -> Dataset:
    """Check a loader's output and normalize dtypes (``convert``); raises ``DataError``;
    mutates nothing.

    Features ``(n, ...)`` with at least one dimension per sample, targets ``(n, ...)``,
    any shapes; test samples shaped and typed as the training ones. Whether integer
    targets are class ids in range depends on the loss and the model, so it is checked
    later, against the model's output width (``jobs.preflight``, and every task).
    """
    if not isinstance(arrays, tuple | list) or len(arrays) != 4:
        raise DataError("a data loader must return (x_train, y_train, x_test, y_test)")
    x_train = _samples("x_train", arrays[0], min_ndim=2)
    x_test = _samples("x_test", arrays[2], min_ndim=2)
    if x_test.shape[1:] != x_train.shape[1:] and x_test.ndim == x_train.ndim == 2:
        raise DataError(f"x_test has {x_test.shape[1]} features but x_train has "
                        f"{x_train.shape[1]}; both must have the same columns")
    _pair("x", x_train, x_test)
    y_train, y_test = arrays[1], arrays[3]
    for name, y, n in (("y_train", y_train, x_train.shape[0]),
                       ("y_test", y_test, x_test.shape[0])):
        shape = np.shape(y)
        if len(shape) < 1 or shape[0] != n:
            raise DataError(f"{name} must have {n} labels to match the features (shape "
                            f"({n},), or ({n}, ...) for targets of more dimensions), got "
                            f"shape {shape}")
    y_train = _samples("y_train", y_train, min_ndim=1)
    y_test = _samples("y_test", y_test, min_ndim=1)
    _pair("y", y_train, y_test)
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   num_classes=output_width(y_train, y_test))


def load(spec: str | DataLoader) -> Dataset:
    """Resolve, call and validate a loader; any loader exception propagates unchanged."""
    return validate(resolve_data(spec)())
