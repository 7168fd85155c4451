"""Datasets addressed by index (docs/DESIGN.md, "Datasets"): the map-style contract, the
built-in sources (in-memory arrays, a directory of memory-mapped ``.npy`` files, a
materialized ``ray.data.Dataset``), and the per-process cache gradient tasks open them with.
"""

from workers.datasets.arrays import ArrayDataset
from workers.datasets.cache import task_dataset
from workers.datasets.contract import (
    InconsistentItemsError,
    MapDataset,
    RayDataSplit,
    Splits,
    as_splits,
    fetch_batch,
    from_ray_data,
)
from workers.datasets.npy import NpyDataset, open_npy_dir
from workers.datasets.opened import OpenedDataset, open_dataset
from workers.datasets.source import DatasetHandle, DatasetSpec, resolve_dataset

__all__ = [
    "ArrayDataset",
    "DatasetHandle",
    "DatasetSpec",
    "InconsistentItemsError",
    "MapDataset",
    "NpyDataset",
    "OpenedDataset",
    "RayDataSplit",
    "Splits",
    "as_splits",
    "fetch_batch",
    "from_ray_data",
    "open_dataset",
    "open_npy_dir",
    "resolve_dataset",
    "task_dataset",
]
