"""Built-in datasets, loader resolution and validation of what loaders return."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.errors import ConfigError
from jobs.preflight import preflight
from workers.data import load, load_digits, resolve_data, synthetic, validate
from workers.errors import DataError


def good() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    return x, np.array([0, 1, 2, 0, 1, 2]), x[:2], np.array([1, 2])


def test_digits_is_a_fixed_standardized_80_20_split() -> None:
    x_train, y_train, x_test, y_test = load_digits()
    assert x_train.shape == (1438, 64) and x_test.shape == (359, 64)
    assert x_train.dtype == np.float32
    assert np.abs(x_train.mean(axis=0)).max() < 1e-4  # centred by train statistics
    again = load_digits()
    np.testing.assert_array_equal(again[1], y_train)  # the split never changes
    assert set(np.unique(y_test)) == set(range(10))


def test_synthetic_is_deterministic_any_size_and_learnable_shape() -> None:
    a = synthetic(features=784, classes=10, n_train=64, n_test=16, seed=3)
    b = synthetic(features=784, classes=10, n_train=64, n_test=16, seed=3)
    c = synthetic(features=784, classes=10, n_train=64, n_test=16, seed=4)
    assert a[0].shape == (64, 784) and a[2].shape == (16, 784)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    ds = load("synthetic:12x3x40x10")
    assert (ds.in_features, ds.num_classes, ds.n_train) == (12, 3, 40)


def test_validate_normalizes_dtypes() -> None:
    ds = validate(good())
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.num_classes == 3 and ds.in_features == 2


def test_nan_features_are_rejected_with_the_row() -> None:
    x, y, xt, yt = good()
    x[3, 1] = np.nan
    with pytest.raises(DataError, match=r"NaN/inf values \(first in row 3\)"):
        validate((x, y, xt, yt))


def test_labels_out_of_range_are_rejected_against_the_models_width() -> None:
    """Class ids are checked where the loss reads them, against the model's outputs: the
    built-in model gets one output per label seen, a fixed-width model refuses more."""
    x, y, xt, _ = good()
    assert validate((x, y, xt, np.array([0, 3]))).num_classes == 4
    with pytest.raises(ConfigError, match=r"outputs 3 classes .* labels up to 3 \(y_test\)"):
        preflight(lambda: torch.nn.Linear(2, 3), lambda: (x, y, xt, np.array([0, 3])), seed=0)
    with pytest.raises(ConfigError, match=r"has label -1 \(y_train\).*0 <= y < 3"):
        preflight("mlp", lambda: (x, np.array([0, 1, -1, 0, 1, 2]), xt, np.array([0, 1])),
                  seed=0)


def test_empty_and_mismatched_data_are_rejected() -> None:
    x, y, xt, yt = good()
    with pytest.raises(DataError, match="empty"):
        validate((np.zeros((0, 2)), np.zeros(0), xt, yt))
    with pytest.raises(DataError, match="labels to match"):
        validate((x, y[:4], xt, yt))
    with pytest.raises(DataError, match="same columns"):
        validate((x, y, np.zeros((2, 3)), yt))
    with pytest.raises(DataError, match=r"\(x_train, y_train, x_test, y_test\)"):
        validate((x, y))


def test_loader_specs_resolve_or_fail_clearly() -> None:
    assert resolve_data(f"{__name__}:good") is good
    with pytest.raises(DataError, match="unknown data"):
        resolve_data("mnist")
    with pytest.raises(DataError, match="no callable loader"):
        resolve_data(f"{__name__}:nothing")
    with pytest.raises(DataError, match="bad synthetic spec"):
        resolve_data("synthetic:abc")


def test_dataset_arrays_are_what_a_loader_returns() -> None:
    data = validate(good())
    again = validate(data.arrays())
    for got, want in zip(again.arrays(), data.arrays(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert data.arrays()[0] is data.x_train  # no copies
