"""A ray.data dataset addressed by index: materialized once into the object store as numpy
blocks with a block-offset index, read back in any order the schedule asks for."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from jobs.errors import ConfigError
from jobs.preflight import preflight_dataset
from workers.datasets import fetch_batch, from_ray_data, open_dataset
from workers.datasets.cache import task_dataset
from workers.datasets.raydata import RayBlocksDataset, materialize
from workers.errors import DataError

N, M = 160, 40


def table() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange((N + M) * 3, dtype=np.float32).reshape(N + M, 3) / 7
    return x, (np.arange(N + M) % 4).astype(np.int64)


def rows(start: int, stop: int, x_name: str = "x", y_name: str = "y") -> list[dict[str, object]]:
    x, y = table()
    return [{x_name: x[i], y_name: int(y[i])} for i in range(start, stop)]


def ray_splits() -> dict[str, object]:
    return {"train": ray.data.from_items(rows(0, N), override_num_blocks=4),
            "test": ray.data.from_items(rows(N, N + M), override_num_blocks=2)}


def renamed_splits() -> dict[str, object]:
    train = ray.data.from_items(rows(0, N, "image", "label"), override_num_blocks=3)
    test = ray.data.from_items(rows(N, N + M, "image", "label"))
    return {"train": from_ray_data(train, x="image", y="label"),
            "test": from_ray_data(test, x="image", y="label")}


def ragged_splits() -> dict[str, object]:
    items = [{"x": np.zeros(3 if i < 10 else 4, np.float32), "y": 0} for i in range(20)]
    return {"train": ray.data.from_items(items, override_num_blocks=2),
            "test": ray.data.from_items(items[:5])}


@ray.remote(num_cpus=1)
def read_in_a_worker(handle: RayBlocksDataset, indices: np.ndarray) -> np.ndarray:
    return fetch_batch(task_dataset(handle), indices)[0]


def test_rows_come_back_in_the_order_the_indices_ask(ray_session: None) -> None:
    opened = open_dataset(f"{__name__}:ray_splits")
    train = opened.splits.train
    assert isinstance(train, RayBlocksDataset) and len(train.blocks) == 4
    assert (opened.n_train, opened.n_test, opened.num_classes) == (N, M, 4)
    x, y = table()
    idx = np.random.default_rng(0).permutation(N)[:37]
    xs, ys = fetch_batch(train, idx)
    assert xs.tobytes() == x[idx].tobytes() and ys.tobytes() == y[idx].tobytes()
    np.testing.assert_array_equal(opened.test_batch(30, 40)[0], x[N + 30:N + 40])
    assert isinstance(opened.task_data, RayBlocksDataset)
    got = ray.get(read_in_a_worker.remote(opened.task_data, idx[:5]))
    assert got.tobytes() == x[idx[:5]].tobytes()


def test_columns_are_chosen_or_named(ray_session: None) -> None:
    opened = open_dataset(f"{__name__}:renamed_splits")
    np.testing.assert_array_equal(opened.first_sample()[0], table()[0][:1])
    with pytest.raises(DataError, match=r"columns \['image', 'label'\], not \['x', 'y'\]"):
        materialize(ray.data.from_items(rows(0, 4, "image", "label")), "train")


def test_rows_of_different_shapes_are_refused_before_the_job(ray_session: None) -> None:
    with pytest.raises(ConfigError, match="different shapes"):
        preflight_dataset("mlp", f"{__name__}:ragged_splits", seed=0)
