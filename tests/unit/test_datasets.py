"""The map-style dataset contract, the npy directory source and the per-process cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workers.data import validate
from workers.datasets import (
    ArrayDataset,
    DatasetHandle,
    InconsistentItemsError,
    NpyDataset,
    as_splits,
    fetch_batch,
    open_dataset,
    open_npy_dir,
    resolve_dataset,
)
from workers.datasets import cache as cache_mod
from workers.datasets.cache import task_dataset
from workers.datasets.opened import sample_indices
from workers.errors import DataError


class Items:
    """Map-style, no fast path: item ``i`` is ``(x[i], y[i])``, shapes chosen per item."""

    def __init__(self, n: int, odd: int | None = None) -> None:
        self.n = n
        self.odd = odd

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        width = 5 if i == self.odd else 4
        return np.arange(width, dtype=np.float64) + i, i % 3


def save_dir(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(root / f"{name}.npy", arr)
    return root


def blobs(n: int = 40, m: int = 10) -> dict[str, np.ndarray]:
    x = np.arange((n + m) * 6, dtype=np.float32).reshape(n + m, 6) / 100
    y = np.arange(n + m) % 4
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:]}


def test_fetch_batch_reads_by_index_with_or_without_the_fast_path() -> None:
    idx = np.array([7, 0, 3, 3, 9])
    xs, ys = fetch_batch(Items(10), idx)
    assert xs.dtype == np.float32 and ys.dtype == np.int64  # the dtype rule
    np.testing.assert_array_equal(xs[:, 0], idx.astype(np.float32))
    np.testing.assert_array_equal(ys, idx % 3)
    fast = ArrayDataset(np.stack([Items(10)[i][0] for i in range(10)]), np.arange(10) % 3)
    for got, want in zip(fetch_batch(fast, idx), (xs, ys), strict=True):
        assert got.tobytes() == want.tobytes() and got.dtype == want.dtype


def test_fetch_batch_applies_the_dtype_rule_and_refuses_bad_batches() -> None:
    xs, ys = fetch_batch(ArrayDataset(np.ones((3, 2), np.uint8), np.array([True] * 3)),
                         np.arange(3))
    assert xs.dtype == np.int64 and ys.dtype == np.float32  # integers int64, bools float32
    with pytest.raises(DataError, match="NaN/inf"):
        fetch_batch(ArrayDataset(np.full((3, 2), np.nan), np.zeros(3)), np.arange(3))

    class Short(ArrayDataset):
        def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self.x[:1], self.y[:1]

    with pytest.raises(DataError, match="one row per index"):
        fetch_batch(Short(np.ones((3, 2)), np.zeros(3)), np.arange(3))
    with pytest.raises(InconsistentItemsError, match="differ in shape"):
        fetch_batch(Items(10, odd=4), np.arange(6))


def test_splits_come_as_a_mapping_or_a_pair() -> None:
    train, test = Items(4), Items(2)
    assert as_splits({"train": train, "test": test}, "d").test is test
    assert as_splits((train, test), "d").train is train
    assert as_splits({"train": train, "test": test, "num_classes": 3}, "d").num_classes == 3
    for bad, match in (({"train": train}, "must have 'train' and 'test'"),
                       ([train], "a dataset spec returns"),
                       ((train, 5), "has no __len__"),
                       ({"train": train, "test": test, "num_classes": 0}, "num_classes")):
        with pytest.raises(DataError, match=match):
            as_splits(bad, "d")


def test_an_npy_directory_is_read_by_index_as_validate_reads_the_arrays(
        tmp_path: Path) -> None:
    arrays = blobs()
    arrays["x_train"] = (arrays["x_train"] * 100).astype(np.uint16)  # integers: int64
    arrays["x_test"] = (arrays["x_test"] * 100).astype(np.int32)
    splits = open_npy_dir(save_dir(tmp_path / "d", arrays))
    assert isinstance(splits.train, NpyDataset) and len(splits.train) == 40
    want = validate(tuple(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")))
    idx = np.array([39, 2, 17])
    xs, ys = fetch_batch(splits.train, idx)
    assert xs.dtype == want.x_train.dtype == np.int64
    assert xs.tobytes() == want.x_train[idx].tobytes()
    assert ys.tobytes() == want.y_train[idx].tobytes()
    assert splits.test.target_range() == (0, 3)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("change", "match"), [
    ({"y_train": np.zeros(39, np.int64)}, r"x_train.npy has 40 rows but y_train.npy has 39"),
    ({"x_test": np.zeros((10, 7), np.float32)}, r"samples of shape \(7,\) but x_train.npy"),
    ({"y_test": np.zeros(10, np.float32)}, r"y_test.npy is float32 but y_train.npy is int64"),
    ({"x_train": np.zeros(40, np.float32)}, r"x_train.npy must have shape \(samples, feat"),
    ({"x_train": np.array(["a"] * 40).reshape(40, 1)}, r"must be numeric .* got dtype <U1"),
    ({"x_test": np.zeros((0, 6), np.float32)}, r"x_test.npy is empty"),
])
def test_a_bad_npy_directory_is_one_clear_line(tmp_path: Path, change: dict[str, Any],
                                               match: str) -> None:
    root = save_dir(tmp_path / "d", {**blobs(), **change})
    with pytest.raises(DataError, match=match) as info:
        open_npy_dir(root)
    assert "\n" not in str(info.value)


def test_a_missing_file_or_directory_is_named(tmp_path: Path) -> None:
    root = save_dir(tmp_path / "d", blobs())
    (root / "y_test.npy").unlink()
    with pytest.raises(DataError, match=r"y_test.npy is missing; an npy dataset directory"):
        resolve_dataset(f"npy:{root}")
    with pytest.raises(DataError, match="does not exist"):
        resolve_dataset(f"npy:{tmp_path / 'nowhere'}")
    (root / "y_test.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="cannot be memory-mapped"):
        open_npy_dir(root)


def test_opening_an_npy_dataset_reads_sizes_not_samples(tmp_path: Path) -> None:
    opened = open_dataset(f"npy:{save_dir(tmp_path / 'd', blobs())}")
    assert (opened.n_train, opened.n_test, opened.sample_shape) == (40, 10, (6,))
    assert opened.num_classes == 4 and opened.label_ranges() == {"y_train": (0, 3),
                                                                 "y_test": (0, 3)}
    assert isinstance(opened.task_data, DatasetHandle)
    assert opened.task_data.spec == f"npy:{(tmp_path / 'd').resolve()}"
    x, y = opened.test_batch(8, 10)
    np.testing.assert_array_equal(x, blobs()["x_test"][8:10])
    np.testing.assert_array_equal(y, blobs()["y_test"][8:10])


def items_with_an_odd_last() -> dict[str, Items]:
    return {"train": Items(50, odd=49), "test": Items(5)}


def test_items_of_different_shapes_are_found_by_the_sample() -> None:
    assert {0, 49} <= set(sample_indices(50).tolist())
    np.testing.assert_array_equal(sample_indices(50), sample_indices(50))
    with pytest.raises(InconsistentItemsError,
                       match=r"train item 49 is x \(5,\) float32.* train item 0 is x \(4,\)"):
        open_dataset(f"{__name__}:items_with_an_odd_last")


class Counting:
    """A task handle that counts how often it is opened."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.opened = 0

    def open(self) -> ArrayDataset:
        self.opened += 1
        return ArrayDataset(np.zeros((2, 1)), np.zeros(2))


def test_a_process_opens_each_dataset_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "_OPENED", type(cache_mod._OPENED)())
    a, b = Counting("a"), Counting("b")
    first = task_dataset(a)
    assert task_dataset(a) is first and task_dataset(Counting("a")) is first
    task_dataset(b)
    assert (a.opened, b.opened) == (1, 1)
    others = [Counting(f"k{i}") for i in range(cache_mod.MAX_OPEN)]
    for handle in others:
        task_dataset(handle)
    assert "a" not in cache_mod._OPENED  # least recently used, dropped past MAX_OPEN
    assert len(cache_mod._OPENED) == cache_mod.MAX_OPEN


def test_a_spec_handle_opens_its_split_in_the_worker(tmp_path: Path) -> None:
    opened = open_dataset(f"npy:{save_dir(tmp_path / 'd', blobs())}")
    train = opened.task_data.open()
    np.testing.assert_array_equal(fetch_batch(train, np.array([5]))[0],
                                  blobs()["x_train"][5:6])
