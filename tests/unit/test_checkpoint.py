"""Checkpoints: consistent cut, hashes, corruption detection, latest, torch export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from paramserver import (
    CheckpointCorruptError,
    OptimizerConfig,
    PlanError,
    RoundCommand,
    ShardPlan,
    ShardStateMachine,
    checkpoint_incarnation,
    export_state_dict,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)

MODEL = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
FULL = {k: v.detach().numpy().copy() for k, v in MODEL.state_dict().items()}
PLAN = ShardPlan.build({k: tuple(v.shape) for k, v in FULL.items()}, 2, split_bytes=256)
OPT = OptimizerConfig(kind="adam", lr=0.01)


def _shards(rounds: int) -> list[ShardStateMachine]:
    machines = [ShardStateMachine(PLAN.pieces(s), part, OPT)
                for s, part in enumerate(PLAN.split(FULL))]
    for r in range(rounds):
        for m in machines:
            grads = {k: np.full(v.shape, r + 1, np.float32) for k, v in m.params().items()}
            m.apply(RoundCommand(round=r, kind="sync", samples=2, ranks=(0,),
                                 grads=grads).encode())
    return machines


def test_write_then_read_restores_identical_shards(tmp_path: Path) -> None:
    machines = _shards(3)
    path = write_checkpoint(tmp_path, 3, PLAN, [m.export_state() for m in machines], OPT)
    assert path == tmp_path / "checkpoints" / "round-3"
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "shard-0.safetensors",
                                                       "shard-1.safetensors"]
    ckpt = read_checkpoint(path)
    assert ckpt.round == 3 and ckpt.plan == PLAN and ckpt.optimizer == OPT
    for s, m in enumerate(machines):
        clone = ShardStateMachine.from_state(PLAN.pieces(s), ckpt.shards[s], OPT)
        assert clone.snapshot() == m.snapshot()


def test_manifest_lists_round_plan_optimizer_and_hashes(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, 1, PLAN, [m.export_state() for m in _shards(1)], OPT)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["round"] == 1 and manifest["optimizer"]["kind"] == "adam"
    assert set(manifest["files"]) == {"shard-0.safetensors", "shard-1.safetensors"}
    assert all(len(h) == 64 for h in manifest["files"].values())
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_inconsistent_cut_is_refused(tmp_path: Path) -> None:
    states = [m.export_state() for m in _shards(2)]
    states[1].version = 1
    with pytest.raises(PlanError, match="every shard"):
        write_checkpoint(tmp_path, 2, PLAN, states, OPT)
    assert latest_checkpoint(tmp_path) is None


def test_flipped_byte_is_detected_naming_the_file(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, 2, PLAN, [m.export_state() for m in _shards(2)], OPT)
    target = path / "shard-1.safetensors"
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError) as info:
        read_checkpoint(path)
    assert info.value.path == str(target) and "shard-1.safetensors" in str(info.value)


def test_missing_file_and_bad_manifest_are_detected(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, 2, PLAN, [m.export_state() for m in _shards(2)], OPT)
    (path / "shard-0.safetensors").unlink()
    with pytest.raises(CheckpointCorruptError, match="missing"):
        read_checkpoint(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointCorruptError, match=r"manifest\.json"):
        read_checkpoint(path)


def test_latest_checkpoint_ignores_incomplete_directories(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for r in (1, 2, 10):
        write_checkpoint(tmp_path, r, PLAN, [m.export_state() for m in _shards(r)], OPT)
    (tmp_path / "checkpoints" / "round-11").mkdir()  # a crash before the rename
    (tmp_path / "checkpoints" / ".tmp-round-12-1").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "round-10"


def test_exported_state_dict_loads_into_torch(tmp_path: Path) -> None:
    machines = _shards(2)
    full = PLAN.join([m.params() for m in machines])
    path = export_state_dict(tmp_path, full)
    assert path.name == "model.safetensors"
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model.load_state_dict(safetensors.torch.load_file(str(path)))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), full[k])
    assert not np.array_equal(full["0.weight"], FULL["0.weight"])


def _rewrite_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=1))


@pytest.mark.parametrize("field", ["version", "layer_versions", "async_steps", "optimizer"])
def test_an_edited_manifest_field_is_detected(tmp_path: Path, field: str) -> None:
    """The file hashes cover the tensors, the manifest's hash its own fields: a changed
    version, layer version, async step or optimizer used to load without a word."""
    path = write_checkpoint(tmp_path, 2, PLAN, [m.export_state() for m in _shards(2)], OPT)
    manifest = json.loads((path / "manifest.json").read_text())
    edited = {"version": 7, "layer_versions": [dict.fromkeys(lv, 9)
                                               for lv in manifest["layer_versions"]],
              "async_steps": [{"0": 5}, {}], "optimizer": {**manifest["optimizer"], "lr": 1.0}}
    _rewrite_manifest(path, **{field: edited[field]})
    with pytest.raises(CheckpointCorruptError, match="manifest_sha256") as info:
        read_checkpoint(path)
    assert info.value.path == str(path / "manifest.json")


def test_a_manifest_without_its_hash_is_refused(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, 2, PLAN, [m.export_state() for m in _shards(2)], OPT)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["manifest_sha256"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointCorruptError, match="no manifest_sha256"):
        read_checkpoint(path)


def test_incarnation_and_early_async_steps_are_carried(tmp_path: Path) -> None:
    states = [m.export_state() for m in _shards(1)]
    states[1].async_early = {1: (4, 6)}
    path = write_checkpoint(tmp_path, 1, PLAN, states, OPT, incarnation="group-7f3a")
    ckpt = read_checkpoint(path)
    assert ckpt.incarnation == "group-7f3a"
    assert [s.async_early for s in ckpt.shards] == [{}, {1: (4, 6)}]
    plain = read_checkpoint(write_checkpoint(tmp_path / "b", 1, PLAN,
                                             [m.export_state() for m in _shards(1)], OPT))
    assert plain.incarnation is None
    from paramserver.errors import ConfigError

    with pytest.raises(ConfigError, match="incarnation"):
        write_checkpoint(tmp_path / "c", 1, PLAN, states, OPT, incarnation=7)  # type: ignore[arg-type]
    assert latest_checkpoint(tmp_path / "c") is None


def test_optimizer_state_that_the_manifests_optimizer_does_not_keep_is_corrupt(
    tmp_path: Path,
) -> None:
    momentum = OptimizerConfig(kind="sgd", lr=0.01, momentum=0.9)
    path = write_checkpoint(tmp_path, 2, PLAN, [m.export_state() for m in _shards(2)],
                            momentum)  # Adam state under a manifest that says momentum
    with pytest.raises(CheckpointCorruptError, match="exp_avg") as info:
        read_checkpoint(path)
    assert info.value.path == str(path / "shard-0.safetensors")


def test_check_restorable_refuses_another_optimizer_or_plan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Resuming an Adam checkpoint with --optimizer momentum used to mix the two states."""
    from paramserver.checkpoint import check_restorable
    from paramserver.errors import CheckpointMismatchError

    ckpt = read_checkpoint(write_checkpoint(tmp_path, 2, PLAN,
                                            [m.export_state() for m in _shards(2)], OPT))
    with pytest.raises(CheckpointMismatchError, match="--optimizer adam"):
        check_restorable(ckpt, PLAN, OptimizerConfig(kind="sgd", lr=0.01, momentum=0.9))
    with pytest.raises(CheckpointMismatchError, match="--shards"):
        check_restorable(ckpt, ShardPlan.build({k: tuple(v.shape) for k, v in FULL.items()},
                                               1), OPT)
    with caplog.at_level("WARNING", logger="paramserver.checkpoint"):
        check_restorable(ckpt, PLAN, OptimizerConfig(kind="adam", lr=0.5))
    assert any("lr=0.5" in r.getMessage() for r in caplog.records)


def test_previous_checkpoint_walks_down_the_rounds(tmp_path: Path) -> None:
    from paramserver.checkpoint import checkpoint_dirs, previous_checkpoint

    for r in (2, 4, 10):
        write_checkpoint(tmp_path, r, PLAN, [m.export_state() for m in _shards(r)], OPT)
    root = tmp_path / "checkpoints"
    assert checkpoint_dirs(tmp_path) == [root / "round-10", root / "round-4", root / "round-2"]
    assert previous_checkpoint(tmp_path, root / "round-10") == root / "round-4"
    assert previous_checkpoint(tmp_path, root / "round-2") is None


def test_the_incarnation_is_read_from_the_manifest_alone(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, 1, PLAN, [m.export_state() for m in _shards(1)], OPT,
                            incarnation="0123abcd")
    assert checkpoint_incarnation(path) == "0123abcd"
    (path / "shard-0.safetensors").write_bytes(b"not read")  # the shards are not opened
    assert checkpoint_incarnation(path) == "0123abcd"
    plain = write_checkpoint(tmp_path / "b", 1, PLAN, [m.export_state() for m in _shards(1)],
                             OPT)
    assert checkpoint_incarnation(plain) is None
