"""Model factory arguments: ``--model-arg key=value`` and ``TrainConfig.model_kwargs``.

The factory is called as ``factory(**model_kwargs)``. Values are JSON scalars (a string,
an int, a float, true/false, null), so summary.json records exactly what the factory got. On
the command line a value is read as JSON when it parses as a JSON scalar (``64`` is an int,
``0.5`` a float, ``true`` a bool, ``null`` None, ``"64"`` the string 64) and is the string
as written otherwise (``relu``); a JSON array or object is refused, and so are ``NaN`` and
``Infinity``, which stay strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from jobs.errors import ConfigError

ModelArg = str | int | float | bool | None
"""One model factory argument: a JSON scalar."""


def _not_a_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_model_arg(text: str) -> tuple[str, ModelArg]:
    """``key=value`` as ``(key, value)``; the value as described in the module docstring.
    Raises ``ConfigError`` for a missing ``=``, a key that is not a Python identifier, or a
    JSON array or object."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"--model-arg {text!r} must be key=value, e.g. --model-arg width=64")
    check_key(key)
    try:
        value = json.loads(raw, parse_constant=_not_a_constant)
    except ValueError:
        return key, raw
    if isinstance(value, list | dict):
        raise ConfigError(f"--model-arg {text!r}: values are JSON scalars (numbers, true, false, "
                          "null, strings), not arrays or objects; pass several --model-arg "
                          "flags, or build the structure inside the factory")
    return key, value


def check_key(key: object) -> None:
    """Raise ``ConfigError`` unless ``key`` can name a keyword argument."""
    if not isinstance(key, str) or not key.isidentifier():
        raise ConfigError(f"model argument name {key!r} must be a Python identifier (the "
                          "factory's keyword), e.g. --model-arg width=64")


def check_model_kwargs(kwargs: object) -> dict[str, ModelArg]:
    """A copy of ``kwargs`` as a plain dict once every key names a keyword argument and every
    value is a JSON scalar (floats finite); raises ``ConfigError`` naming the bad entry."""
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"model_kwargs must be a dict of keyword arguments, got "
                          f"{type(kwargs).__name__}")
    checked: dict[str, ModelArg] = {}
    for key, value in kwargs.items():
        check_key(key)
        if value is not None and not isinstance(value, str | int | float):
            raise ConfigError(
                f"model_kwargs[{key!r}] is a {type(value).__name__}; values must be JSON "
                "scalars (str, int, float, bool, None) so summary.json can record them; build "
                "other objects inside the factory")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"model_kwargs[{key!r}] is {value}; it must be a finite number")
        checked[key] = value
    return checked
