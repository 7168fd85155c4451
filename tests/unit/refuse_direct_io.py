"""A filesystem that refuses ``O_DIRECT`` at ``open`` (EINVAL), for the writers' fallbacks."""

from __future__ import annotations

import errno
import os

import pytest


def refuse_o_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``os.open`` fail with EINVAL whenever its flags ask for ``O_DIRECT``."""
    real_open = os.open

    def refuse(path: object, flags: int, *args: int) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
