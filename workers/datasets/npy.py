"""A directory of ``.npy`` files as two map-style datasets, read memory-mapped.

Layout (docs/DESIGN.md, "Datasets"): ``x_train.npy``, ``y_train.npy``, ``x_test.npy``,
``y_test.npy``, as ``numpy.save`` or ``numpy.lib.format.open_memmap`` writes them. Features
``(n, ...)`` with at least one dimension per sample, targets ``(n, ...)``, x and y of a split
of one length, train and test of one shape per sample and of the same kind of dtype under
the dtype rule (``workers.data.rule_dtype``). ``open_npy_dir`` checks all that from the
files' headers alone; the samples are read only by ``get_batch``, through a memory map that
lives for that one call (``np.load(mmap_mode="r")``), so neither the driver nor a worker
keeps any of the files in its resident memory. NaN/inf values are refused where they are
read (a batch, or the preflight's sample), as the dtype rule says.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from workers.data import rule_dtype
from workers.datasets.contract import Splits
from workers.errors import DataError

FILES = ("x_train", "y_train", "x_test", "y_test")
PREFIX = "npy:"
_SCAN_ROWS = 1 << 20  # targets read per step of target_range


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy file's header; ``DataError`` for a missing or bad file."""
    if not path.is_file():
        raise DataError(f"{path} is missing; an npy dataset directory holds "
                        f"{', '.join(f + '.npy' for f in FILES)}")
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise DataError(f"{path} cannot be memory-mapped as a .npy array ({detail}); write "
                        "it with numpy.save of a numeric array") from exc
    if not isinstance(arr, np.memmap):
        raise DataError(f"{path} is not a single .npy array")
    return tuple(int(d) for d in arr.shape), arr.dtype


class NpyDataset:
    """One split: ``x`` and ``y`` files of one length, read by index through a memory map."""

    def __init__(self, x_path: Path, y_path: Path, length: int) -> None:
        self.x_path = x_path
        self.y_path = y_path
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = self.get_batch(np.array([index], dtype=np.int64))
        return xs[0], ys[0]

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices`` of both files (copies; the maps are closed on return)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.length):
            raise DataError(f"indices out of range for {self.x_path} ({self.length} rows)")
        return (np.asarray(np.load(self.x_path, mmap_mode="r")[idx]),
                np.asarray(np.load(self.y_path, mmap_mode="r")[idx]))

    def target_range(self) -> tuple[int, int]:
        """``(min, max)`` of the targets, read in bounded steps."""
        y = np.load(self.y_path, mmap_mode="r")
        low, high = None, None
        for start in range(0, len(y), _SCAN_ROWS):
            part = np.asarray(y[start:start + _SCAN_ROWS])
            low = int(part.min()) if low is None else min(low, int(part.min()))
            high = int(part.max()) if high is None else max(high, int(part.max()))
        assert low is not None and high is not None  # a split is never empty
        return low, high


def open_npy_dir(directory: str | os.PathLike[str]) -> Splits:
    """The two splits of an npy dataset directory (see the module doc); raises
    ``DataError`` with one line naming the file and the fix. Reads headers only."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"npy dataset directory {root} does not exist (or is not a directory)")
    headers = {name: _header(root / f"{name}.npy") for name in FILES}
    for name, (shape, dtype) in headers.items():
        min_ndim = 2 if name.startswith("x") else 1
        if len(shape) < min_ndim:
            need = "(samples, features, ...): one feature is (n, 1)" if min_ndim == 2 else \
                "(samples, ...)"
            raise DataError(f"{root / name}.npy must have shape {need}, got {shape}")
        if shape[0] == 0 or 0 in shape:
            raise DataError(f"{root / name}.npy is empty (shape {shape})")
        rule_dtype(f"{root / name}.npy", dtype)
    for split in ("train", "test"):
        (xs, _), (ys, _) = headers[f"x_{split}"], headers[f"y_{split}"]
        if xs[0] != ys[0]:
            raise DataError(f"{root}/x_{split}.npy has {xs[0]} rows but y_{split}.npy has "
                            f"{ys[0]}; both must have one row per sample")
    for kind in ("x", "y"):
        (train, dtrain), (test, dtest) = headers[f"{kind}_train"], headers[f"{kind}_test"]
        if train[1:] != test[1:]:
            raise DataError(f"{root}/{kind}_test.npy has samples of shape {test[1:]} but "
                            f"{kind}_train.npy has {train[1:]}; both must have the same "
                            "shape per sample")
        if rule_dtype(kind, dtrain) != rule_dtype(kind, dtest):
            raise DataError(f"{root}/{kind}_test.npy is {dtest} but {kind}_train.npy is "
                            f"{dtrain} (after the dtype rule: floats and bools float32, "
                            "integers int64); save both as floats or both as integers")
    return Splits(
        train=NpyDataset(root / "x_train.npy", root / "y_train.npy", headers["x_train"][0][0]),
        test=NpyDataset(root / "x_test.npy", root / "y_test.npy", headers["x_test"][0][0]))


def npy_identity(directory: str | os.PathLike[str]) -> str:
    """A key for a worker's cache: the absolute directory and each file's size and
    modification time, so a directory written anew is opened anew."""
    root = Path(directory).resolve()
    stamps = []
    for name in FILES:
        try:
            st = (root / f"{name}.npy").stat()
            stamps.append(f"{st.st_size}.{st.st_mtime_ns}")
        except OSError:
            stamps.append("-")
    return f"{PREFIX}{root}@{'/'.join(stamps)}"
