"""Per-epoch progress: a tqdm bar on a TTY, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm


class EpochProgress:
    """Tracks one epoch at a time; ``round_done`` per round, ``epoch_done`` at its end."""

    def __init__(self, *, epochs: int, rounds_per_epoch: int, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.epochs = epochs
        self.rounds_per_epoch = rounds_per_epoch
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty()
        self._bar: Any = None
        self._samples = 0
        self._seconds = 0.0
        self._loss = float("nan")
        self._changes = 0

    def round_done(self, epoch: int, loss: float, samples: int, wall_s: float,
                   leader_changes: int = 0) -> None:
        """Advance the epoch's bar by one round; ``leader_changes``: so far, all shards."""
        self._loss, self._samples, self._seconds = loss, self._samples + samples, \
            self._seconds + wall_s
        self._changes = max(self._changes, leader_changes)
        if not (self.enabled and self.tty):
            return
        if self._bar is None:
            self._bar = tqdm(total=self.rounds_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}",
                             file=self.stream, leave=True)
        self._bar.set_postfix(loss=f"{loss:.4f}", sps=f"{self.rate():.0f}",
                              leader_changes=self._changes)
        self._bar.update(1)

    def rate(self) -> float:
        """Samples per second over the epoch so far."""
        return self._samples / self._seconds if self._seconds > 0 else 0.0

    def epoch_done(self, epoch: int, test_accuracy: float) -> None:
        """Close the epoch: final postfix on a TTY, or one summary line otherwise."""
        if self.enabled and self.tty and self._bar is not None:
            self._bar.set_postfix(loss=f"{self._loss:.4f}", acc=f"{test_accuracy:.4f}",
                                  sps=f"{self.rate():.0f}", leader_changes=self._changes)
            self._bar.close()
        elif self.enabled:
            print(f"epoch {epoch + 1}/{self.epochs} loss {self._loss:.4f} "
                  f"test_accuracy {test_accuracy:.4f} samples/s {self.rate():.0f} "
                  f"leader_changes {self._changes}",
                  file=self.stream, flush=True)
        self._bar, self._samples, self._seconds = None, 0, 0.0
