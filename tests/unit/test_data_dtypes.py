"""Validation follows the dtype: floats and bools become float32 and are checked for
NaN/inf, integers become int64; inputs and targets may have any shape per sample."""

from __future__ import annotations

import numpy as np
import pytest

from workers.data import load, validate
from workers.errors import DataError


def test_images_and_multi_dimensional_targets_keep_their_shapes() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(10, 3, 4, 5))  # float64 (N, C, H, W)
    masks = rng.integers(0, 6, size=(10, 4, 5)).astype(np.int32)
    ds = validate((images, masks, images[:2], masks[:2]))
    assert ds.x_train.shape == (10, 3, 4, 5) and ds.x_train.dtype == np.float32
    assert ds.y_train.shape == (10, 4, 5) and ds.y_train.dtype == np.int64
    assert ds.sample_shape == (3, 4, 5) and ds.in_features == 60
    assert ds.num_classes == int(masks.max()) + 1
    assert ds.x_train.flags.c_contiguous


def test_the_dtype_rule() -> None:
    x = np.arange(12, dtype=np.uint8).reshape(6, 2)  # integer features: token ids
    flags = np.array([True, False, True, True, False, False])
    ds = validate((x, flags, x[:2], flags[:2]))
    assert ds.x_train.dtype == np.int64 and ds.y_train.dtype == np.float32
    np.testing.assert_array_equal(ds.y_train, [1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    regression = np.linspace(0, 1, 12).reshape(6, 2)  # float64 targets (N, k)
    floats = x.astype(np.float64)
    ds = validate((floats, regression, floats[:2], regression[:2]))
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.float32
    assert ds.num_classes == 2  # a built-in model gets one output per target value
    ds = validate((x, regression[:, 0], x[:2], regression[:2, 0]))
    assert ds.num_classes == 1
    with pytest.raises(DataError, match=r"x_train must be numeric .* got dtype <U1"):
        validate((np.full((6, 2), "a"), flags, x[:2], flags[:2]))


def test_builtin_loaders_are_unchanged() -> None:
    ds = load("synthetic:12x3x40x10")
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert (ds.in_features, ds.num_classes, ds.y_train.shape) == (12, 3, (40,))


def test_nan_in_float_targets_is_rejected_with_the_row() -> None:
    x = np.zeros((5, 2), dtype=np.float32)
    y = np.array([0.5, 1.5, np.nan, 2.0, np.inf])
    with pytest.raises(DataError, match=r"y_train has 2 NaN/inf values \(first in row 2\)"):
        validate((x, y, x[:2], y[:2]))
    big = np.array([1e39, 0.0])  # beyond float32: inf after the conversion
    with pytest.raises(DataError, match=r"y_test has 1 NaN/inf .*float32's range"):
        validate((x, np.zeros(5), x[:2], big))


def test_train_and_test_must_agree_per_sample() -> None:
    x = np.zeros((4, 2, 3), dtype=np.float32)
    y = np.zeros(4, dtype=np.int64)
    with pytest.raises(DataError, match=r"x_test has samples of shape \(3, 2\) but x_train "
                                        r"has \(2, 3\)"):
        validate((x, y, np.zeros((2, 3, 2)), y[:2]))
    with pytest.raises(DataError, match=r"y_test is float32 but y_train is int64"):
        validate((x, y, x[:2], np.zeros(2)))
    with pytest.raises(DataError, match=r"x_train must have shape \(samples, features, \.\.\.\)"):
        validate((np.zeros(4), y, np.zeros(2), y[:2]))
