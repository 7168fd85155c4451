"""Checkpoints: a consistent cut of every shard at one round, written atomically.

Layout: ``<dir>/checkpoints/round-<r>/shard-<s>.safetensors`` (parameters ``param/<key>``
and optimizer state ``optim/<key>/<name>``) and ``manifest.json`` (round, plan, optimizer
config, per-layer versions and the SHA-256 of every shard file). The round directory is
written under a temporary name, fsynced and renamed, so a crash never leaves a partial
checkpoint behind a real name. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from paramserver.errors import CheckpointCorruptError, PlanError
from paramserver.optim import OptimizerConfig
from paramserver.plan import ShardPlan
from paramserver.shard_state import ShardState

_ROUND_DIR = re.compile(r"^round-(\d+)$")
MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified checkpoint read back from disk."""

    path: Path
    round: int
    plan: ShardPlan
    optimizer: OptimizerConfig
    shards: list[ShardState]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shard_tensors(state: ShardState) -> dict[str, npt.NDArray[Any]]:
    tensors: dict[str, npt.NDArray[Any]] = {}
    for key, value in state.params.items():
        tensors[f"param/{key}"] = np.asarray(value, np.float32, order="C")
    for key, named in state.optimizer_state.items():
        for name, value in named.items():
            tensors[f"optim/{key}/{name}"] = np.asarray(value, order="C")
    return tensors


def write_checkpoint(
    directory: str | os.PathLike[str], round: int, plan: ShardPlan,
    shard_states: Sequence[ShardState], optimizer: OptimizerConfig,
) -> Path:
    """Write the cut at driver round ``round``: every shard state must be at one version
    (``round`` in sync/ssp; ``round * workers`` in async, where each contribution is one).

    Returns the round directory. If that round's checkpoint already exists it is left as is
    (a deterministic run writes the same cut) and its path is returned. Blocks on fsync.
    """
    if len(shard_states) != plan.shards:
        raise PlanError(f"got {len(shard_states)} shard states for a {plan.shards}-shard plan")
    versions = [state.version for state in shard_states]
    if len(set(versions)) != 1:
        raise PlanError(f"checkpoint at round {round} needs every shard at the same version, "
                        f"got versions {versions}; wait for all shards to apply the round")
    root = Path(directory) / "checkpoints"
    final = root / f"round-{round}"
    if (final / MANIFEST).exists():
        return final
    tmp = root / f".tmp-round-{round}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for s, state in enumerate(shard_states):
        name = f"shard-{s}.safetensors"
        save_file(_shard_tensors(state), str(tmp / name))
        _fsync(tmp / name)
        files[name] = _sha256(tmp / name)
    manifest = {
        "round": round, "version": versions[0], "plan": json.loads(plan.to_json()),
        "optimizer": optimizer.to_dict(),
        "files": files, "layer_versions": [state.layer_versions for state in shard_states],
        "async_steps": [{str(k): v for k, v in sorted(state.async_steps.items())}
                        for state in shard_states],
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=1))
    _fsync(tmp / MANIFEST)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)  # a manifest-less leftover is not a checkpoint
    os.rename(tmp, final)
    _fsync(root)
    return final


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / MANIFEST).read_text())
        if not isinstance(data, dict):
            raise ValueError("the manifest is not a JSON object")
        return data
    except (OSError, ValueError) as exc:
        raise CheckpointCorruptError(str(path / MANIFEST), str(exc)) from exc


def _read_shard(path: Path, expected_hash: str, plan: ShardPlan, s: int, version: int,
                layer_versions: Mapping[str, int]) -> ShardState:
    if not path.exists():
        raise CheckpointCorruptError(str(path), "the file is missing")
    if _sha256(path) != expected_hash:
        raise CheckpointCorruptError(str(path), "its SHA-256 does not match manifest.json")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointCorruptError(str(path), f"not a readable safetensors file: {exc}") from exc
    params: dict[str, npt.NDArray[np.float32]] = {}
    optim: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for name, value in tensors.items():
        kind, _, rest = name.partition("/")
        if kind == "param":
            params[rest] = value.astype(np.float32, copy=False)
        else:
            key, _, field_name = rest.rpartition("/")
            optim.setdefault(key, {})[field_name] = value
    for piece in plan.pieces(s):
        if piece.key not in params or params[piece.key].shape != piece.shape:
            got = params[piece.key].shape if piece.key in params else "nothing"
            raise CheckpointCorruptError(str(path), f"layer {piece.key!r} is {got}, the plan "
                                                    f"says {piece.shape}")
    return ShardState(version, params, optim, dict(layer_versions))


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a round directory: hashes, shapes against the plan, file set.

    Raises CheckpointCorruptError naming the first bad file.
    """
    root = Path(path)
    manifest = _read_manifest(root)
    try:
        plan = ShardPlan.from_json(json.dumps(manifest["plan"]))
        optimizer = OptimizerConfig.from_dict(manifest["optimizer"])
        round_, files = int(manifest["round"]), dict(manifest["files"])
        version = int(manifest.get("version", round_))
        layer_versions = list(manifest.get("layer_versions") or [{}] * plan.shards)
        async_steps = [{int(k): int(v) for k, v in steps.items()}
                       for steps in manifest.get("async_steps") or [{}] * plan.shards]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointCorruptError(str(root / MANIFEST), f"bad field: {exc}") from exc
    shards = []
    for s in range(plan.shards):
        name = f"shard-{s}.safetensors"
        if name not in files:
            raise CheckpointCorruptError(str(root / MANIFEST), f"no hash listed for {name}")
        state = _read_shard(root / name, files[name], plan, s, version, layer_versions[s])
        state.async_steps = async_steps[s]
        shards.append(state)
    return Checkpoint(root, round_, plan, optimizer, shards)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The complete round directory (one with a manifest) of the highest round, or None."""
    root = Path(directory) / "checkpoints"
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for child in root.iterdir():
        match = _ROUND_DIR.match(child.name)
        if match and (child / MANIFEST).is_file():
            candidate = (int(match.group(1)), child)
            if best is None or candidate[0] > best[0]:
                best = candidate
    return None if best is None else best[1]


def export_state_dict(
    path: str | os.PathLike[str], full_tensors: Mapping[str, npt.NDArray[Any]]
) -> Path:
    """Write full tensors as a safetensors file torch can ``load_state_dict`` from.

    ``path`` is the file, or a directory to hold ``model.safetensors``. Written atomically.
    """
    target = Path(path)
    if target.is_dir():
        target = target / "model.safetensors"
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    save_file({k: np.asarray(v, order="C") for k, v in full_tensors.items()}, str(tmp))
    _fsync(tmp)
    os.replace(tmp, target)
    return target
