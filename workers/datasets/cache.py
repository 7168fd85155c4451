"""The datasets a worker process has opened: each one once, like the model cache.

A gradient task gets a small handle (``DatasetHandle``, or a materialized
``RayBlocksDataset``) and its indices; ``task_dataset`` opens the handle's dataset the first
time a process sees its ``key`` and hands the same object to every later task. The few most
recently used datasets stay open (a worker process may serve several jobs).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from workers.datasets.contract import MapDataset

MAX_OPEN = 4
"""Datasets a process keeps open; the least recently used one is dropped past this."""


class TaskDataset(Protocol):
    """What a gradient task receives instead of the samples."""

    @property
    def key(self) -> str: ...

    def open(self) -> MapDataset: ...


_OPENED: OrderedDict[str, MapDataset] = OrderedDict()
_OPENS: dict[str, int] = {}


def task_dataset(handle: TaskDataset) -> MapDataset:
    """The dataset of ``handle``, opened once per process (see the module doc)."""
    ds = _OPENED.get(handle.key)
    if ds is None:
        ds = handle.open()
        _OPENED[handle.key] = ds
        _OPENS[handle.key] = _OPENS.get(handle.key, 0) + 1
        while len(_OPENED) > MAX_OPEN:
            _OPENED.popitem(last=False)
    else:
        _OPENED.move_to_end(handle.key)
    return ds


def opens(key: str) -> int:
    """How many times this process opened the dataset ``key`` (1 once cached)."""
    return _OPENS.get(key, 0)
