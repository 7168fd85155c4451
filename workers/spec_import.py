"""Importing the module a ``package.module:name`` spec names, with a one-line error."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_spec_module(module_name: str, what: str, error: type[Exception]) -> ModuleType:
    """Import ``module_name`` for ``what`` (e.g. ``"model factory 'pkg.mod:f'"``).

    Raises ``error`` when the module is missing or its import raises (a syntax error, an
    exception at import time); the original exception is the ``__cause__``.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"cannot import module {module_name!r} of {what}: {exc}") from exc
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise error(f"cannot import module {module_name!r} of {what}: importing it raised "
                    f"{type(exc).__name__}: {detail}; fix the module") from exc
