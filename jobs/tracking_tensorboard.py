"""The ``tensorboard`` tracker: scalars in TensorBoard event files, via ``tensorboardX``.

Each round's numbers (``jobs.tracking.round_scalars``: loss, accuracy, samples_per_s, the
publish/compute/aggregate/commit seconds, leader changes, ...) are scalars tagged with their
metrics.jsonl names at step = the round; the config is a text summary, ``config``. The writer
opens at the first round with ``purge_step`` at that round: a resumed job (or a fresh one
writing into the folder of an earlier run) hides the earlier events from that round on, so
TensorBoard shows one curve, as metrics.jsonl does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jobs.tracking import round_scalars

FLUSH_S = 5
"""Seconds between the writer's flushes to disk (and on close)."""


class TensorBoardTracker:
    """Writes into ``logdir`` (``tensorboard --logdir <out>/tensorboard``)."""

    def __init__(self, logdir: Path) -> None:
        from tensorboardX import SummaryWriter

        self.logdir = logdir
        self._writer_type = SummaryWriter
        self._writer: Any = None
        self._config: str | None = None

    def log_config(self, config: dict[str, Any]) -> None:
        """Keep the config as indented JSON; it is written with the first round."""
        body = json.dumps(config, indent=2, sort_keys=True, default=str)
        self._config = "\n".join("    " + line for line in body.splitlines())  # markdown code

    def log_round(self, step: int, record: dict[str, Any]) -> None:
        """Each of the round's scalars at ``step``."""
        writer = self._open(purge_step=step)
        for tag, value in round_scalars(record).items():
            writer.add_scalar(tag, value, global_step=step)

    def close(self, *, failed: bool = False) -> None:
        """Flush and close the event file (the config alone when no round ran; no file when
        nothing was logged)."""
        if self._writer is None and self._config is None:
            return
        self._open(purge_step=None).close()

    def _open(self, *, purge_step: int | None) -> Any:
        if self._writer is None:
            self.logdir.mkdir(parents=True, exist_ok=True)
            # The suffix keeps two writers within one second apart, in the order they opened
            # (the file name's timestamp has whole seconds; TensorBoard reads files by name).
            self._writer = self._writer_type(logdir=str(self.logdir), purge_step=purge_step,
                                             flush_secs=FLUSH_S,
                                             filename_suffix=f".{time.time_ns()}")
            if self._config is not None:
                self._writer.add_text("config", self._config, global_step=purge_step or 0)
        return self._writer
