"""The byte layout of a shard's snapshot image: one frame (``commands.encode_frame``) whose
header holds the versions and async step records, and whose arrays are each parameter
(``p/<key>``) and each optimizer-state tensor (``o/<key>/<name>``), in key order, so replicas
that applied the same log produce the same bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from paramserver.commands import decode_frame, frame_parts
from paramserver.shard_state import ShardState

__all__ = ["image_digest", "image_frame", "read_image", "tensors_digest"]


def image_frame(
    version: int, params: Mapping[str, npt.NDArray[Any]],
    opt: Mapping[str, Mapping[str, npt.NDArray[Any]]], layer_versions: Mapping[str, int],
    async_steps: Mapping[int, int], async_early: Mapping[int, tuple[int, ...]],
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """The header and arrays of the image (the arrays alias the given state)."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for key in sorted(params):
        arrays[f"p/{key}"] = params[key]
        for name, value in opt.get(key, {}).items():  # a buffer has no optimizer state
            arrays[f"o/{key}/{name}"] = value
    header: dict[str, Any] = {
        "version": version, "layer_versions": dict(layer_versions),
        "async_steps": {str(k): v for k, v in sorted(async_steps.items())}}
    if async_early:  # only while some rank has steps applied out of order
        header["async_early"] = {str(k): list(v) for k, v in sorted(async_early.items())}
    return header, arrays


def read_image(data: bytes | memoryview, dtype_of: Callable[[str], np.dtype[Any]]) -> ShardState:
    """The state an image holds; parameters cast to ``dtype_of(key)``."""
    header, arrays = decode_frame(data)
    params: dict[str, npt.NDArray[Any]] = {}
    opt: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for name, value in arrays.items():
        kind, _, rest = name.partition("/")
        if kind == "p":
            params[rest] = value.astype(dtype_of(rest))
        else:
            key, _, field_name = rest.rpartition("/")
            opt.setdefault(key, {})[field_name] = value
    steps = {int(k): int(v) for k, v in header.get("async_steps", {}).items()}
    early = {int(k): tuple(int(s) for s in v) for k, v in header.get("async_early", {}).items()}
    return ShardState(int(header["version"]), params, opt,
                      {k: int(v) for k, v in header["layer_versions"].items()}, steps, early)


def image_digest(header: dict[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    """SHA-256 (hex) of the image's bytes, hashed buffer by buffer (never joined)."""
    h = hashlib.sha256()
    for part in frame_parts(header, dict(arrays)):
        h.update(part)
    return h.hexdigest()


def tensors_digest(params: Mapping[str, npt.NDArray[Any]]) -> str:
    """SHA-256 (hex) of the tensors' bytes alone, with their keys, in key order."""
    h = hashlib.sha256()
    for key in sorted(params):
        h.update(key.encode() + b"\0")
        h.update(np.ascontiguousarray(params[key]).reshape(-1).data.cast("B"))
    return h.hexdigest()
