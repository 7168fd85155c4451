"""The map-style dataset contract (docs/DESIGN.md, "Datasets"): data addressed by index.

A dataset is any object with ``__len__`` and ``__getitem__(i) -> (x, y)`` (one sample's
features and target), and optionally the fast path ``get_batch(indices) -> (xs, ys)``:
numpy arrays stacked along axis 0, row ``j`` the sample ``indices[j]``. ``fetch_batch`` is
the one way the workers and the driver read samples: through ``get_batch`` when there is
one, else item by item, then the dtype rule of ``workers.data.convert`` (floats and bools
float32, integers int64, NaN/inf refused). A spec provides both splits as ``Splits``
(``as_splits``: a mapping with ``train`` and ``test``, or a ``(train, test)`` pair).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from workers.data import convert
from workers.errors import DataError


@runtime_checkable
class MapDataset(Protocol):
    """Samples by index: ``len(ds)`` of them, ``ds[i] -> (x, y)`` for ``0 <= i < len(ds)``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, Any]: ...


class InconsistentItemsError(DataError):
    """A dataset's items differ in shape or kind of dtype (``workers.datasets.opened``
    samples them before a job starts)."""


@dataclass(frozen=True, kw_only=True)
class Splits:
    """A dataset spec's train and test splits, plus the output width when it declares one
    (``num_classes``; else it is derived from the targets, see ``workers.datasets.opened``)."""

    train: MapDataset
    test: MapDataset
    num_classes: int | None = None


def as_splits(value: object, name: str) -> Splits:
    """What a dataset spec's callable returned, as ``Splits``: a mapping with keys ``train``
    and ``test`` (and optionally ``num_classes``), or a ``(train, test)`` pair. Each split is
    a map-style dataset or a ``ray.data.Dataset``. ``DataError`` naming ``name`` otherwise."""
    num_classes: object = None
    if isinstance(value, Splits):
        return value
    if isinstance(value, Mapping):
        missing = [k for k in ("train", "test") if k not in value]
        extra = sorted(str(k) for k in value if k not in ("train", "test", "num_classes"))
        if missing or extra:
            raise DataError(f"{name} returned a mapping with keys {sorted(map(str, value))}; "
                            "it must have 'train' and 'test' (and optionally 'num_classes')")
        train, test, num_classes = value["train"], value["test"], value.get("num_classes")
    elif isinstance(value, tuple | list) and len(value) == 2:
        train, test = value
    else:
        raise DataError(f"{name} returned {type(value).__name__}; a dataset spec returns "
                        "{'train': dataset, 'test': dataset} or (train, test), each with "
                        "__len__ and __getitem__(i) -> (x, y), or a ray.data.Dataset")
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, int) or num_classes < 1):
        raise DataError(f"{name}: num_classes must be an int >= 1, got {num_classes!r}")
    for split, ds in (("train", train), ("test", test)):
        if not is_ray_dataset(ds) and not isinstance(ds, MapDataset):
            raise DataError(f"{name}: the {split} split is {type(ds).__name__}, which has no "
                            "__len__ and __getitem__; return a map-style dataset or a "
                            "ray.data.Dataset")
    return Splits(train=train, test=test, num_classes=num_classes)


@dataclass(frozen=True)
class RayDataSplit:
    """A ``ray.data.Dataset`` split whose features and targets are the columns ``x`` and
    ``y`` (``from_ray_data``); a bare ``ray.data.Dataset`` split reads columns ``x`` and
    ``y``. The driver materializes it once (``workers.datasets.raydata``)."""

    dataset: Any
    x: str = "x"
    y: str = "y"


def from_ray_data(dataset: Any, *, x: str = "x", y: str = "y") -> RayDataSplit:
    """A ``ray.data.Dataset`` as a split, its columns ``x`` (features) and ``y`` (targets)."""
    if not is_ray_dataset(dataset):
        raise DataError(f"from_ray_data takes a ray.data.Dataset, got {type(dataset).__name__}")
    return RayDataSplit(dataset, x, y)


def is_ray_dataset(value: object) -> bool:
    """``value`` is a ``ray.data.Dataset`` or a ``RayDataSplit`` (told without importing
    ray.data)."""
    return isinstance(value, RayDataSplit) or any(
        c.__module__.startswith("ray.data") and c.__name__ == "Dataset"
        for c in type(value).__mro__)


def fetch_batch(ds: MapDataset, indices: np.ndarray, *, what: str = "dataset"
                ) -> tuple[np.ndarray, np.ndarray]:
    """The samples ``indices`` of ``ds`` as ``(xs, ys)``, row ``j`` the sample
    ``indices[j]``, after the dtype rule. Uses ``ds.get_batch`` when it has one. Raises
    ``DataError`` (naming ``what``) when the rows are not one per index, and
    ``InconsistentItemsError`` when items differ in shape."""
    idx = np.asarray(indices, dtype=np.int64)
    get_batch = getattr(ds, "get_batch", None)
    if callable(get_batch):
        got = get_batch(idx)
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise DataError(f"{what}.get_batch must return (xs, ys), got "
                            f"{type(got).__name__}")
        xs, ys = np.asarray(got[0]), np.asarray(got[1])
    else:
        items = [ds[int(i)] for i in idx]
        xs, ys = _stack(items, 0, what), _stack(items, 1, what)
    for part, arr in (("features", xs), ("targets", ys)):
        if arr.ndim < 1 or arr.shape[0] != len(idx):
            raise DataError(f"{what} gave {part} of shape {arr.shape} for {len(idx)} indices; "
                            "get_batch must stack one row per index along axis 0")
    if xs.dtype == object or ys.dtype == object:
        raise InconsistentItemsError(f"{what} has items of different shapes (they stack only "
                                     "as objects); every x and every y must have one shape")
    return convert(f"{what} features", xs), convert(f"{what} targets", ys)


def _stack(items: list[tuple[Any, Any]], part: int, what: str) -> np.ndarray:
    try:
        arrays = [np.asarray(item[part]) for item in items]
    except (TypeError, IndexError) as exc:
        raise DataError(f"{what}[i] must return a pair (x, y); {exc}") from exc
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        name = "x" if part == 0 else "y"
        raise InconsistentItemsError(f"{what} has items whose {name} differ in shape "
                                     f"({', '.join(map(str, sorted(shapes)))}); every "
                                     "item must have one shape")
    return np.stack(arrays)
