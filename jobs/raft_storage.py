"""The job's Raft storage: one directory per group incarnation under ``<out>/raft``.

A fresh run (and a resumed ``durability="memory"`` run, whose checkpoint is its durable
state) draws a new incarnation id (``consensus.incarnation``) and records it in
``<out>/raft/incarnation`` on the driver's node, atomically; its replicas keep their logs in
``<out>/raft/<incarnation>/`` on whatever node they run, and stamp the id into them. So a
replica placed on a node that still holds an older run's logs (a node the cleanup could not
reach) never reloads them: they sit in another directory, and a database stamped with
another id is refused. ``--resume`` (``durability="disk"``) reads the recorded id and
finds its groups' logs again; without a record it draws a new one and the groups start
fresh from the checkpoint (which is all ``--resume`` needs).
"""

from __future__ import annotations

import logging
from pathlib import Path

from consensus.atomic_file import write_atomic
from consensus.errors import ConfigError
from consensus.incarnation import check_incarnation, new_incarnation

__all__ = ["INCARNATION_FILE", "fresh_incarnation", "group_storage", "read_incarnation",
           "resumed_incarnation"]

LOG = logging.getLogger(__name__)

INCARNATION_FILE = "incarnation"
"""Name of the record in the job's Raft storage root (``<out>/raft``)."""


def read_incarnation(root: Path) -> str | None:
    """The incarnation recorded under ``root`` (``<out>/raft``); None if there is none or it
    is unreadable (a warning)."""
    path = root / INCARNATION_FILE
    try:
        value = path.read_text(encoding="ascii").strip()
        check_incarnation(value, str(path))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        LOG.warning("ignoring the Raft incarnation record %s: %s", path, exc)
        return None
    return value


def fresh_incarnation(root: Path) -> str:
    """Draw a new incarnation and record it under ``root`` (atomically, durably)."""
    incarnation = new_incarnation()
    write_atomic(root / INCARNATION_FILE, f"{incarnation}\n".encode("ascii"))
    return incarnation


def resumed_incarnation(root: Path, checkpoint: str | None = None) -> str:
    """The incarnation recorded under ``root``; else ``checkpoint``'s (the one the resumed
    checkpoint was cut under: replicas on other nodes may still hold its logs), recorded;
    else a fresh one (recorded)."""
    found = read_incarnation(root)
    if found is not None:
        return found
    if checkpoint is not None:
        check_incarnation(checkpoint, "the checkpoint's incarnation")
        LOG.warning("no Raft incarnation recorded in %s: using the checkpoint's (%s)", root,
                    checkpoint)
        write_atomic(root / INCARNATION_FILE, f"{checkpoint}\n".encode("ascii"))
        return checkpoint
    LOG.warning("no Raft incarnation recorded in %s: the shard groups start fresh from the "
                "checkpoint", root)
    return fresh_incarnation(root)


def group_storage(root: Path, incarnation: str | None) -> Path:
    """Where the replicas of ``incarnation`` keep their logs: ``root/<incarnation>``
    (``root`` itself without one)."""
    return root if incarnation is None else root / incarnation
