"""In-memory arrays as a map-style dataset: ``ArrayDataset(x, y)``."""

from __future__ import annotations

import numpy as np

from workers.errors import DataError


class ArrayDataset:
    """Samples ``(x[i], y[i])`` of two arrays of equal length (no copies are made)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
            raise DataError(f"ArrayDataset needs x and y of one length along axis 0, got "
                            f"shapes {x.shape} and {y.shape}")
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x[index], self.y[index]

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x[indices], y[indices])``."""
        return self.x[indices], self.y[indices]

    def target_range(self) -> tuple[int, int]:
        """``(min, max)`` of the targets."""
        return int(self.y.min()), int(self.y.max())
