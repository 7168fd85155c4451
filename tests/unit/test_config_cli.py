"""TrainConfig validation and the CLI: invalid flags or combinations exit 2 with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.config import TrainConfig
from jobs.errors import ConfigError
from jobs.rounds import StragglerPolicy
from jobs.train import parse_config


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--staleness", "2"], "staleness only applies to --mode ssp"),
        (["--mode", "ssp"], "needs --staleness >= 1"),
        (["--backup-workers", "2", "--workers", "2"], "backup workers must be in [0, workers)"),
        (["--workers", "3", "--global-batch", "64"], "multiple of workers"),
        (["--mode", "async", "--backup-workers", "1"], "backup workers need rounds"),
        (["--lr", "-1"], "learning rate must be a positive"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--mode", "bogus"], "invalid choice"),
        (["--workers", "two"], "invalid int value"),
        (["--straggler-timeout", "0"], "straggler timeout"),
        # flags that name something missing fail here too, before Ray starts
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'"),
        (["--model", "os:sep"], "is not callable"),
        (["--data", "nope"], "unknown data 'nope'"),
        (["--data", "os:no_loader"], "no callable loader named 'no_loader'"),
        (["--data", "synthetic:abc"], "synthetic"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert reason in err


def test_defaults_are_the_default_job() -> None:
    cfg = parse_config([])
    assert (cfg.model, cfg.data, cfg.workers, cfg.shards, cfg.replicas) == (
        "cnn", "digits", 2, 2, 3)
    assert cfg.mode == "sync" and cfg.out == "runs/cnn-digits"


def test_flags_map_onto_the_config(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "round-4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "round-4" / "manifest.json").write_text("{}")
    cfg = parse_config(["--mode", "ssp", "--staleness", "2", "--workers", "4",
                        "--backup-workers", "1", "--optimizer", "adam", "--gpu", "0.5",
                        "--out", str(tmp_path), "--resume", "--checkpoint-every", "7"])
    assert (cfg.mode, cfg.staleness, cfg.workers, cfg.backup_workers) == ("ssp", 2, 4, 1)
    assert cfg.optimizer == "adam" and cfg.lr == pytest.approx(1e-3)  # adam's default lr
    assert cfg.gpu == 0.5 and cfg.resume and cfg.checkpoint_every == 7
    assert cfg.out == str(tmp_path)
    assert parse_config(["--gpu"]).gpu == 1.0
    assert parse_config(["--model", "bench.common:build_mlp"]).model == "bench.common:build_mlp"


def test_resume_without_a_checkpoint_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        parse_config(["--out", str(out), "--resume"])
    assert exc.value.code == 2
    assert "--resume found no checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_config_errors_are_value_errors_and_config_is_frozen() -> None:
    with pytest.raises(ValueError, match="job name"):
        TrainConfig(job="bad name")
    with pytest.raises(ConfigError, match="momentum"):
        TrainConfig(momentum=1.0)
    cfg = TrainConfig()
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_straggler_policy_closes_only_after_deadline_with_quorum() -> None:
    policy = StragglerPolicy(workers=4, backup_workers=1, timeout_s=2.0)
    assert not policy.should_close(elapsed_s=1.0, contributed=3)  # before the deadline
    assert not policy.should_close(elapsed_s=3.0, contributed=2)  # below N - b
    assert policy.should_close(elapsed_s=3.0, contributed=3)
    assert policy.wait_budget(elapsed_s=0.5, default_s=60) == pytest.approx(1.5)
    no_backup = StragglerPolicy(workers=4, backup_workers=0, timeout_s=2.0)
    assert not no_backup.should_close(elapsed_s=99.0, contributed=3)
    assert no_backup.wait_budget(elapsed_s=99.0, default_s=60) == 60


def test_jobs_train_stays_the_api_after_the_cli_module_is_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``python -m jobs.train`` is a submodule named like the API function ``jobs.train``;
    importing the module must not turn ``from jobs import train`` into something uncallable."""
    import importlib

    import jobs

    importlib.import_module("jobs.train")
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr("jobs.api.train", lambda *a, **k: calls.append((a, k)) or "ran")
    from jobs import train

    assert train("config", model="factory") == "ran"
    assert jobs.train("again") == "ran"
    assert calls == [(("config",), {"model": "factory"}), (("again",), {})]
