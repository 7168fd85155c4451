"""Atomic, durable small-file writes: a temporary file, fsync, rename, directory fsync.

A reader (or a process started after a crash or power loss) sees the old content or the new
one, never a mix or an empty file; the new name is durable once the call returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from consensus.snapshot_files import durable_dir, fsync_dir

__all__ = ["temp_path", "write_atomic", "write_with"]


def temp_path(path: Path) -> Path:
    """The temporary sibling ``path`` is written to first (unique per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_with(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Make ``path`` the file ``write(tmp)`` produces, atomically and durably: ``write``
    creates the temporary file, which is then fsync'ed and renamed over ``path``, and the
    directory (created durably if missing) fsync'ed. On any error the temporary file is
    removed and ``path`` is unchanged. Blocks on disk IO."""
    target = Path(path)
    durable_dir(target.parent)
    tmp = temp_path(target)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path``'s content with ``data`` atomically and durably (see
    :func:`write_with`)."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))
