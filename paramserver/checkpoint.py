"""Checkpoints: a consistent cut of every shard at one round, written atomically.

Layout: ``<dir>/checkpoints/round-<r>/shard-<s>.safetensors`` (parameters ``param/<key>``,
module buffers ``buffer/<key>`` in their own dtype, optimizer state ``optim/<key>/<name>``)
and ``manifest.json`` (round, version, plan, optimizer config, per-layer versions, async
steps, an optional ``incarnation`` string, the
SHA-256 of every shard file, and ``manifest_sha256``: the SHA-256 of the manifest's other
fields as canonical JSON, so no field can change unnoticed). The round directory is written
under a temporary name, fsynced and renamed, so a crash never leaves a partial checkpoint
behind a real name. No pickle anywhere.

Reading verifies everything (manifest hash, file hashes, tensor shapes, optimizer state
against the manifest's optimizer) and raises CheckpointCorruptError naming the bad file;
``check_restorable`` then says whether an intact checkpoint fits a run (its optimizer and
shard plan), raising CheckpointMismatchError before anything is restored.

``prune_checkpoints`` keeps the newest K round directories once a new one is written;
``find_checkpoint`` and ``checkpoint_state_dict`` turn a checkpoint (or a run's output
folder) into full tensors by ``state_dict`` key, which ``export_state_dict`` writes as one
safetensors file (``python -m jobs.export``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from consensus.snapshot_files import fsync_dir
from paramserver.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    ConfigError,
    OptimizerStateError,
    PlanError,
)
from paramserver.optim import OptimizerConfig
from paramserver.optimizer_state import check_fits, describe
from paramserver.plan import BUFFER_DTYPES, ShardPlan
from paramserver.shard_state import ShardState

LOG = logging.getLogger(__name__)
_ROUND_DIR = re.compile(r"^round-(\d+)$")
MANIFEST = "manifest.json"
MANIFEST_HASH = "manifest_sha256"
"""The manifest field holding the SHA-256 of the other fields' canonical JSON."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified checkpoint read back from disk."""

    path: Path
    round: int
    plan: ShardPlan
    optimizer: OptimizerConfig
    shards: list[ShardState]
    incarnation: str | None = None
    """The storage incarnation the checkpoint was cut under, if the writer named one."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_digest(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``fields`` as canonical JSON (sorted keys, no whitespace, ASCII)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                           allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _shard_tensors(state: ShardState, buffers: Collection[str]) -> dict[str, npt.NDArray[Any]]:
    tensors: dict[str, npt.NDArray[Any]] = {}
    for key, value in state.params.items():
        if key in buffers:
            tensors[f"buffer/{key}"] = np.asarray(value, order="C")
        else:
            tensors[f"param/{key}"] = np.asarray(value, np.float32, order="C")
    for key, named in state.optimizer_state.items():
        for name, value in named.items():
            tensors[f"optim/{key}/{name}"] = np.asarray(value, order="C")
    return tensors


def write_checkpoint(
    directory: str | os.PathLike[str], round: int, plan: ShardPlan,
    shard_states: Sequence[ShardState], optimizer: OptimizerConfig, *,
    incarnation: str | None = None,
) -> Path:
    """Write the cut at driver round ``round``: every shard state must be at one version
    (``round`` in sync/ssp; ``round * workers`` in async, where each contribution is one).
    ``incarnation``: an optional string naming the storage the cut came from, carried in the
    manifest for a later resume to compare.

    Returns the round directory. If that round's checkpoint already exists it is left as is
    (a deterministic run writes the same cut) and its path is returned. Blocks on fsync.
    """
    if incarnation is not None and not isinstance(incarnation, str):
        raise ConfigError(f"incarnation must be a string or None, got "
                          f"{type(incarnation).__name__}")
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
        buffers = {p.key for p in plan.pieces(s) if p.buffer}
        save_file(_shard_tensors(state, buffers), str(tmp / name))
        fsync_dir(tmp / name)
        files[name] = _sha256(tmp / name)
    manifest = {
        "round": round, "version": versions[0], "plan": json.loads(plan.to_json()),
        "optimizer": optimizer.to_dict(),
        "files": files, "layer_versions": [state.layer_versions for state in shard_states],
        "async_steps": [{str(k): v for k, v in sorted(state.async_steps.items())}
                        for state in shard_states],
    }
    if any(state.async_early for state in shard_states):
        manifest["async_early"] = [{str(k): list(v) for k, v in sorted(state.async_early.items())}
                                   for state in shard_states]
    if incarnation is not None:
        manifest["incarnation"] = incarnation
    manifest[MANIFEST_HASH] = manifest_digest(manifest)
    (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=1))
    fsync_dir(tmp / MANIFEST)
    fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)  # a manifest-less leftover is not a checkpoint
    os.rename(tmp, final)
    fsync_dir(root)
    return final


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest's fields, its own hash verified (and removed)."""
    try:
        data = json.loads((path / MANIFEST).read_text())
        if not isinstance(data, dict):
            raise ValueError("the manifest is not a JSON object")
    except (OSError, ValueError) as exc:
        raise CheckpointCorruptError(str(path / MANIFEST), str(exc)) from exc
    recorded = data.pop(MANIFEST_HASH, None)
    if not isinstance(recorded, str):
        raise CheckpointCorruptError(str(path / MANIFEST),
                                     f"it has no {MANIFEST_HASH} field covering its contents")
    try:
        actual = manifest_digest(data)
    except ValueError as exc:  # NaN or Infinity in a field: not canonical JSON
        raise CheckpointCorruptError(str(path / MANIFEST), f"bad field: {exc}") from exc
    if actual != recorded:
        raise CheckpointCorruptError(str(path / MANIFEST),
                                     f"its fields do not match its {MANIFEST_HASH}")
    return data


def _read_shard(path: Path, expected_hash: str, plan: ShardPlan, s: int, version: int,
                layer_versions: Mapping[str, int], optimizer: OptimizerConfig) -> ShardState:
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
        elif kind == "buffer":
            params[rest] = value
        else:
            key, _, field_name = rest.rpartition("/")
            optim.setdefault(key, {})[field_name] = value
    for piece in plan.pieces(s):
        if piece.key not in params or params[piece.key].shape != piece.shape:
            got = params[piece.key].shape if piece.key in params else "nothing"
            raise CheckpointCorruptError(str(path), f"layer {piece.key!r} is {got}, the plan "
                                                    f"says {piece.shape}")
        if piece.buffer:  # a buffer: no optimizer state; its own dtype
            if params[piece.key].dtype != BUFFER_DTYPES[piece.dtype]:
                raise CheckpointCorruptError(str(path), f"buffer {piece.key!r} is "
                                             f"{params[piece.key].dtype}, the plan says "
                                             f"{piece.dtype}")
            continue
        try:
            check_fits(piece.key, piece.shape, optim.get(piece.key, {"step": np.zeros(
                (), np.int64)}), optimizer)
        except OptimizerStateError as exc:
            raise CheckpointCorruptError(str(path), f"{exc} (manifest.json records the "
                                                    f"{describe(optimizer)} optimizer)") from None
    return ShardState(version, params, optim, dict(layer_versions))


def checkpoint_incarnation(path: str | os.PathLike[str]) -> str | None:
    """The storage incarnation a checkpoint's (hash-verified) manifest records; None if it
    records none. Raises CheckpointCorruptError for a bad manifest."""
    root = Path(path)
    incarnation = _read_manifest(root).get("incarnation")
    if incarnation is not None and not isinstance(incarnation, str):
        raise CheckpointCorruptError(str(root / MANIFEST),
                                     f"bad field: incarnation is {type(incarnation).__name__}")
    return incarnation


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
        async_early = [{int(k): tuple(int(s) for s in v) for k, v in early.items()}
                       for early in manifest.get("async_early") or [{}] * plan.shards]
        incarnation = manifest.get("incarnation")
        if incarnation is not None and not isinstance(incarnation, str):
            raise TypeError(f"incarnation is {type(incarnation).__name__}, not a string")
        if not len(layer_versions) == len(async_steps) == len(async_early) == plan.shards:
            raise ValueError(f"per-shard lists do not all have {plan.shards} entries")
    except (KeyError, TypeError, ValueError, PlanError) as exc:
        raise CheckpointCorruptError(str(root / MANIFEST), f"bad field: {exc}") from exc
    shards = []
    for s in range(plan.shards):
        name = f"shard-{s}.safetensors"
        if name not in files:
            raise CheckpointCorruptError(str(root / MANIFEST), f"no hash listed for {name}")
        state = _read_shard(root / name, files[name], plan, s, version, layer_versions[s],
                            optimizer)
        state.async_steps = async_steps[s]
        state.async_early = async_early[s]
        shards.append(state)
    return Checkpoint(root, round_, plan, optimizer, shards, incarnation)


def _layout(optimizer: OptimizerConfig) -> tuple[str, tuple[str, ...]]:
    """What decides the shape of an optimizer's state: its kind and its buffers."""
    return optimizer.kind, optimizer.state_names()


def check_restorable(checkpoint: Checkpoint, plan: ShardPlan,
                     optimizer: OptimizerConfig) -> None:
    """Raise CheckpointMismatchError unless ``checkpoint`` fits a run with ``plan`` and
    ``optimizer``: the same shard plan, and the same optimizer kind and state buffers (an
    Adam checkpoint restored under SGD with momentum would mix their state). Differences in
    hyperparameters alone (lr, momentum factor, betas, eps, weight decay, nesterov) are
    allowed, the run's values apply from here on, and each is logged as a warning."""
    manifest = checkpoint.path / MANIFEST
    if checkpoint.plan != plan:
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint.path} was cut for a {checkpoint.plan.shards}-shard plan "
            f"that differs from this run's {plan.shards}-shard plan; resume with the same "
            "model, --shards and split size, or start fresh without --resume")
    if _layout(checkpoint.optimizer) != _layout(optimizer):
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint.path} holds {describe(checkpoint.optimizer)} optimizer "
            f"state ({manifest}), but this run uses {describe(optimizer)}; resume with "
            f"--optimizer {_flag(checkpoint.optimizer)}, or start fresh without --resume")
    theirs, ours = checkpoint.optimizer.to_dict(), optimizer.to_dict()
    for name in sorted(theirs):
        if theirs[name] != ours.get(name):
            LOG.warning("resuming %s with optimizer %s=%s (the checkpoint was trained with "
                        "%s)", checkpoint.path, name, ours.get(name), theirs[name])


def _flag(optimizer: OptimizerConfig) -> str:
    """The ``--optimizer`` value (with ``--momentum``) that gives ``optimizer``'s state."""
    if optimizer.kind == "sgd":
        return f"momentum --momentum {optimizer.momentum}" if optimizer.momentum > 0 else "sgd"
    return optimizer.kind


def checkpoint_round(path: str | os.PathLike[str]) -> int | None:
    """The round a ``round-<r>`` directory name says, or None for another name."""
    match = _ROUND_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(directory: str | os.PathLike[str]) -> list[Path]:
    """The complete round directories (those with a manifest), highest round first."""
    root = Path(directory) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        round = checkpoint_round(child)
        if round is not None and (child / MANIFEST).is_file():
            found.append((round, child))
    return [path for _, path in sorted(found, reverse=True)]


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The complete round directory (one with a manifest) of the highest round, or None."""
    dirs = checkpoint_dirs(directory)
    return dirs[0] if dirs else None


def previous_checkpoint(directory: str | os.PathLike[str], than: Path) -> Path | None:
    """The complete round directory of the highest round below ``than``'s, or None."""
    below = checkpoint_round(than)
    for path in checkpoint_dirs(directory):
        if below is not None and int(checkpoint_round(path) or 0) < below:
            return path
    return None


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
    fsync_dir(tmp)
    os.replace(tmp, target)
    return target


def prune_checkpoints(directory: str | os.PathLike[str], keep: int, *,
                      protect: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints under ``directory``; returns
    the round directories deleted, newest first. Call it only once the newest checkpoint is
    durably written (``write_checkpoint`` returned): the newest, the one a resume would use,
    is always kept, and so is ``protect`` (the one just written, should it be older). Each
    one is first renamed out of the ``round-<r>`` namespace, so a crash part way never
    leaves a partial directory that looks like a checkpoint. Raises ``ConfigError`` for a
    ``keep`` that is not an int >= 1, deleting nothing."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"keep must be an int >= 1 (checkpoints to keep), got {keep!r}")
    root = Path(directory) / "checkpoints"
    kept = Path(protect).resolve() if protect is not None else None
    doomed = [path for path in checkpoint_dirs(directory)[keep:] if path.resolve() != kept]
    for path in doomed:
        trash = root / f".pruned-{path.name}-{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(path, trash)
        shutil.rmtree(trash)
    if doomed:
        fsync_dir(root)
    return doomed


def find_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``path`` names: ``path`` itself when it is a complete round directory
    (it has a manifest), else the latest one of a run's output folder (``path/checkpoints``)
    or of a ``checkpoints`` folder; None if there is none."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return root
    found = latest_checkpoint(root)
    if found is None and root.name == "checkpoints":
        found = latest_checkpoint(root.parent)
    return found


def checkpoint_state_dict(path: str | os.PathLike[str]) -> dict[str, npt.NDArray[Any]]:
    """The full tensors of the verified checkpoint at round directory ``path``, by
    ``state_dict`` key: every parameter (float32), joined from the shards' pieces by the
    checkpoint's plan, and every module buffer it holds, in its own dtype. Optimizer state
    is left out. Raises ``CheckpointCorruptError`` as ``read_checkpoint`` does."""
    checkpoint = read_checkpoint(path)
    tensors: dict[str, npt.NDArray[Any]] = dict(
        checkpoint.plan.join([shard.params for shard in checkpoint.shards]))
    return tensors
