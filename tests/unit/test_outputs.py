"""Outputs are safe to keep: a fresh run into a folder with an earlier run's results refuses
(API and CLI) unless told to overwrite, and old checkpoints are pruned to the newest K only
after a new one is written, never the one a resume would use. No Ray: the driver runs
against the in-process fake server of ``test_driver_lifecycle``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from jobs import driver as driver_mod
from jobs.config import TrainConfig
from jobs.driver import Driver
from jobs.errors import ConfigError, OutputExistsError
from jobs.outputs import RESULTS, check_out, existing_results
from jobs.train import parse_config
from paramserver.checkpoint import checkpoint_dirs, prune_checkpoints
from paramserver.errors import ConfigError as ServerConfigError
from tests.unit.test_driver_lifecycle import FakeBackend, FakeServer

DATA = "synthetic:8x3x32x16"  # 2 rounds per epoch at global batch 16


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_mod, "ensure_ray", lambda address: None)
    monkeypatch.setattr(driver_mod, "cluster_cpus", lambda: 8)
    monkeypatch.setattr(Driver, "_train", lambda self, *args: (1.0, 0))


def config(out: Path, **changes: Any) -> TrainConfig:
    base = TrainConfig(model="mlp", data=DATA, epochs=1, global_batch=16, out=str(out),
                       progress=False, job="outputs")
    return replace(base, **changes)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def earlier_run(out: Path, name: str) -> None:
    """Leave one result of an earlier run in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if name == "checkpoints":
        FakeServer(config(out), {}).checkpoint(out, 7)
    else:
        (out / name).write_bytes(b"an earlier run's " + name.encode())


@pytest.mark.parametrize("name", RESULTS)
def test_a_fresh_run_over_earlier_results_is_refused_and_changes_nothing(
    tmp_path: Path, no_ray: None, name: str
) -> None:
    earlier_run(tmp_path, name)
    before = snapshot(tmp_path)
    with pytest.raises(OutputExistsError, match=r"--resume.*--overwrite") as exc:
        Driver(config(tmp_path), backend=FakeBackend()).run()
    assert isinstance(exc.value, ConfigError)
    assert name in str(exc.value)
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no raft/, no new files


def test_an_empty_or_missing_out_or_other_files_are_fine(tmp_path: Path) -> None:
    check_out(config(tmp_path / "missing"))
    check_out(config(tmp_path))
    (tmp_path / "checkpoints").mkdir()  # a run that failed before its first checkpoint
    (tmp_path / "raft").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    assert existing_results(tmp_path) == []
    check_out(config(tmp_path))


def test_overwrite_replaces_the_earlier_results(tmp_path: Path, no_ray: None) -> None:
    for name in RESULTS:
        earlier_run(tmp_path, name)
    (tmp_path / "notes.txt").write_text("mine")
    Driver(config(tmp_path, overwrite=True), backend=FakeBackend()).run()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["round-2"]  # round-7 is gone
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_is_not_refused(tmp_path: Path, no_ray: None) -> None:
    earlier_run(tmp_path, "checkpoints")
    (tmp_path / "metrics.jsonl").write_text("")
    Driver(config(tmp_path, resume=True, epochs=4), backend=FakeBackend()).run()
    assert (tmp_path / "checkpoints" / "round-8").is_dir()


def test_the_cli_refuses_with_exit_2_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier_run(tmp_path, "metrics.jsonl")
    with pytest.raises(SystemExit) as exc:
        parse_config(["--model", "mlp", "--data", DATA, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl" in err and "--overwrite" in err
    assert parse_config(["--model", "mlp", "--data", DATA, "--out", str(tmp_path),
                         "--overwrite"]).overwrite


@pytest.mark.parametrize(
    ("changes", "reason"),
    [({"overwrite": True, "resume": True}, "--overwrite and --resume"),
     ({"keep_checkpoints": 0}, "keep_checkpoints must be >= 1"),
     ({"keep_checkpoints": -2}, "keep_checkpoints must be >= 1")],
)
def test_bad_output_settings_are_config_errors(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        TrainConfig(**changes)


def test_keep_checkpoints_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_config([]).keep_checkpoints == TrainConfig().keep_checkpoints == 3
    assert parse_config(["--keep-checkpoints", "5"]).keep_checkpoints == 5
    assert parse_config(["--keep-checkpoints", "all"]).keep_checkpoints is None
    with pytest.raises(SystemExit) as exc:
        parse_config(["--keep-checkpoints", "some"])
    assert exc.value.code == 2 and "--keep-checkpoints" in capsys.readouterr().err


def cut(out: Path, *rounds: int) -> None:
    for r in rounds:
        FakeServer(config(out), {}).checkpoint(out, r)


def names(out: Path) -> list[str]:
    return [p.name for p in checkpoint_dirs(out)]


def test_pruning_keeps_the_newest_k(tmp_path: Path) -> None:
    cut(tmp_path, 2, 4, 6, 8)
    removed = prune_checkpoints(tmp_path, 2)
    assert [p.name for p in removed] == ["round-4", "round-2"]
    assert names(tmp_path) == ["round-8", "round-6"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round-6",
                                                                           "round-8"]
    assert prune_checkpoints(tmp_path, 5) == []


def test_pruning_never_deletes_the_protected_or_latest_checkpoint(tmp_path: Path) -> None:
    """A run that ends below its latest checkpoint (``max_rounds`` under it) keeps both the
    one it wrote and the one a resume would use."""
    cut(tmp_path, 3, 9, 12)
    prune_checkpoints(tmp_path, 1, protect=tmp_path / "checkpoints" / "round-3")
    assert names(tmp_path) == ["round-12", "round-3"]


def test_a_bad_keep_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    cut(tmp_path, 1, 2)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ServerConfigError, match="keep"):
            prune_checkpoints(tmp_path, bad)  # type: ignore[arg-type]
    assert names(tmp_path) == ["round-2", "round-1"]


def test_the_driver_prunes_after_writing_its_checkpoint(tmp_path: Path, no_ray: None) -> None:
    cut(tmp_path, 1, 2)
    Driver(config(tmp_path, resume=True, epochs=3, keep_checkpoints=2),
           backend=FakeBackend()).run()
    assert names(tmp_path) == ["round-6", "round-2"]
    cut(tmp_path / "all", 1, 2)
    Driver(config(tmp_path / "all", resume=True, epochs=3, keep_checkpoints=None),
           backend=FakeBackend()).run()
    assert names(tmp_path / "all") == ["round-6", "round-2", "round-1"]
