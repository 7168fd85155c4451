"""Dataset specs: what ``--dataset`` (``TrainConfig.dataset``) names, and how to open it.

``npy:DIR`` is a directory of ``.npy`` files (``workers.datasets.npy``; the prefix always
means this built-in); ``package.module:name`` is a callable taking no arguments that returns
both splits (``workers.datasets.contract.as_splits``); the API also takes such a callable
itself. ``DatasetHandle`` is how a gradient task opens the train split in its own process
(``workers.datasets.cache``): it carries the spec, never the samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workers.datasets.contract import MapDataset, Splits, as_splits, is_ray_dataset
from workers.datasets.npy import PREFIX, npy_identity, open_npy_dir
from workers.errors import DataError
from workers.spec_import import import_spec_callable

DatasetFn = Callable[[], object]
DatasetSpec = str | DatasetFn
"""``npy:DIR``, ``package.module:name``, or (from the API) the callable itself."""


def is_npy(spec: DatasetSpec) -> bool:
    """``spec`` names the built-in npy directory source."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def describe_spec(spec: DatasetSpec) -> str:
    """How messages name a dataset spec: ``--dataset npy:/data`` or ``dataset mod:fn``."""
    if isinstance(spec, str):
        return f"--dataset {spec}"
    from workers.models import callable_key

    return f"dataset {callable_key(spec)}"


def resolve_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Check ``spec`` without calling it: an ``npy:`` directory must open (its headers are
    read; ``workers.datasets.npy``), a ``package.module:name`` must import and be callable.
    Returns the spec with an ``npy:`` directory made absolute. Raises ``DataError``."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise DataError(f"a dataset spec is 'npy:DIR' or 'package.module:name', got {spec!r}")
    if is_npy(spec):
        directory = spec[len(PREFIX):]
        if not directory:
            raise DataError("--dataset npy: needs a directory, e.g. --dataset npy:/data/mine")
        open_npy_dir(directory)
        return PREFIX + str(Path(directory).resolve())
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise DataError(f"unknown dataset {spec!r}: use 'npy:DIR' or 'package.module:name'")
    import_spec_callable(spec, "dataset", DataError)
    return spec


def open_splits(spec: DatasetSpec) -> Splits:
    """Both splits of ``spec`` (``resolve_dataset``d): the npy directory opened, or the
    callable called and its result checked (``as_splits``). Exceptions the callable raises
    propagate unchanged; a ray.data split is returned as it is (the driver materializes it)."""
    name = describe_spec(spec)
    if isinstance(spec, str) and is_npy(spec):
        return open_npy_dir(spec[len(PREFIX):])
    fn = spec if callable(spec) else import_spec_callable(spec, "dataset", DataError)
    assert callable(fn)
    return as_splits(fn(), name)


def dataset_key(spec: DatasetSpec) -> str:
    """What identifies ``spec``'s samples in a worker's cache: an npy directory's files
    (``npy_identity``), a spec string itself, or a callable's ``module:qualname`` and a
    digest of its bytes under Ray's cloudpickle (a redefined callable opens anew)."""
    if isinstance(spec, str):
        return npy_identity(spec[len(PREFIX):]) if is_npy(spec) else spec
    from ray import cloudpickle

    from workers.models import callable_key

    try:
        data: bytes = cloudpickle.dumps(spec)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise DataError(f"{describe_spec(spec)} cannot be pickled to send to the workers: "
                        f"{type(exc).__name__}: {' '.join(str(exc).split())}; define it at "
                        "module level") from exc
    return f"{callable_key(spec)}#{hashlib.sha256(data).hexdigest()[:16]}"


@dataclass(frozen=True)
class DatasetHandle:
    """How a gradient task opens one split of a dataset in its process: the spec (a string
    or a callable, pickled by reference or by value) and the split's name."""

    spec: DatasetSpec
    split: str
    key: str

    def open(self) -> MapDataset:
        """Open the spec's splits here and return this one (``DataError`` for a ray.data
        split: those travel materialized, never by spec)."""
        splits = open_splits(self.spec)
        ds = splits.train if self.split == "train" else splits.test
        if is_ray_dataset(ds):
            raise DataError(f"{describe_spec(self.spec)}: a ray.data split cannot be opened "
                            "by a worker; the driver materializes it")
        return ds
