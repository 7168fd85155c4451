"""Importing what a ``package.module:name`` spec names, with a one-line error."""

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


def import_spec_attr(spec: str, kind: str, error: type[Exception]) -> object:
    """The object ``package.module:name`` names, for a ``kind`` (e.g. ``"loss"``).

    Raises ``error`` when ``spec`` is not of that form, the module does not import
    (``import_spec_module``) or has no such attribute.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise error(f"{kind} spec {spec!r} must be 'package.module:name' or a built-in")
    module = import_spec_module(module_name, f"{kind} {spec!r}", error)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise error(f"module {module_name!r} has no {kind} named {attr!r}") from exc


def import_spec_callable(spec: str, kind: str, error: type[Exception]) -> object:
    """``import_spec_attr``, and ``error`` unless the object is callable."""
    fn = import_spec_attr(spec, kind, error)
    if not callable(fn):
        raise error(f"{kind} {spec!r} is not callable (got {type(fn).__name__})")
    return fn
