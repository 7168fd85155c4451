"""The output folder (``--out``): what counts as an earlier run's results, and when a fresh
run may replace them.

A fresh run (no ``resume``) writes ``checkpoints/``, ``metrics.jsonl``, ``model.safetensors``
and ``summary.json`` from scratch. Into a folder that already holds any of them it starts
only with ``overwrite``; otherwise it refuses with ``OutputExistsError`` before anything is
touched, so results are never lost to a re-run with the same ``--out``. An empty or missing
folder, or one holding only other files (a Raft log, a plot), is fine.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from jobs.config import TrainConfig
from jobs.errors import OutputExistsError

LOG = logging.getLogger(__name__)
RESULTS: tuple[str, ...] = ("checkpoints", "metrics.jsonl", "model.safetensors", "summary.json")
"""What a run writes into ``--out`` that counts as its results."""
REPLACED: tuple[str, ...] = (*RESULTS, "curves.png")
"""What an ``overwrite`` run deletes before it starts (its results and their plot)."""


def existing_results(out: Path) -> list[str]:
    """The names of ``RESULTS`` present in ``out``; ``checkpoints/`` counts when it holds
    anything. Empty for a missing or empty folder."""
    found = []
    for name in RESULTS:
        path = out / name
        if name == "checkpoints":
            if path.is_dir() and any(path.iterdir()):
                found.append(f"{name}/")
            elif path.exists() and not path.is_dir():
                found.append(name)
        elif path.exists():
            found.append(name)
    return found


def check_out(config: TrainConfig) -> None:
    """Raise ``OutputExistsError`` when a fresh run of ``config`` would replace an earlier
    run's results (see the module doc). Reads only."""
    if config.resume or config.overwrite:
        return
    found = existing_results(config.out_dir)
    if found:
        raise OutputExistsError(
            f"--out {config.out_dir} holds results of an earlier run ({', '.join(found)}); "
            "continue it with --resume, replace it with --overwrite, or choose another --out")


def clear_results(out: Path) -> None:
    """Delete an earlier run's results (``REPLACED``) from ``out`` for an ``overwrite`` run,
    each with a warning."""
    for name in REPLACED:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            LOG.warning("--overwrite: removing %s from an earlier run", path)
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            LOG.warning("--overwrite: removing %s from an earlier run", path)
            path.unlink()
