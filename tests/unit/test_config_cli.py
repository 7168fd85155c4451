"""TrainConfig validation and the CLI: invalid flags or combinations exit 2 with one line."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from jobs.config import OPTIMIZERS, TrainConfig, default_lr, default_out
from jobs.errors import ConfigError
from jobs.rounds import StragglerPolicy
from jobs.train import build_parser, parse_config
from workers.errors import ModelFactoryError


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
        (["--workers", "two"], "expected a worker count or 'auto', got 'two'"),
        (["--straggler-timeout", "0"], "straggler timeout"),
        # flags that name something missing fail here too, before Ray starts
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'"),
        (["--model", "os:sep"], "is not callable"),
        (["--data", "nope"], "unknown data 'nope'"),
        (["--data", "os:no_loader"], "no callable loader named 'no_loader'"),
        (["--data", "synthetic:abc"], "synthetic"),
        (["--durability", "tape"], "invalid choice"),
        (["--shards", "many"], "expected a shard count or 'auto'"),
        (["--shards", "0"], "shards must be >= 1 or 'auto'"),
        (["--nesterov", "--optimizer", "adam"], "nesterov needs the momentum optimizer"),
        (["--nesterov", "--momentum", "0"], "nesterov needs the momentum optimizer"),
        (["--momentum", "1.5"], "momentum must be in [0, 1)"),
        (["--weight-decay", "-1"], "weight decay must be >= 0"),
        (["--nonfinite-policy", "ignore"], "invalid choice"),
        (["--timeout", "0"], "timeout must be a positive number of seconds"),
        (["--timeout", "nan"], "timeout must be a positive number of seconds"),
        (["--model-arg", "width"], "must be key=value"),
        (["--model-arg", "1x=2"], "must be a Python identifier"),
        (["--model-arg", "hidden=[64, 32]"], "values are JSON scalars"),
        (["--model", "bench.common:build_mlp", "--model-arg", "a=1", "--model-arg", "a=2"],
         "a is given twice"),
        (["--model", "mlp", "--model-arg", "width=3"], "takes no model arguments"),
        (["--model", "bench.common:build_mlp", "--model-arg", "width=3"],
         "cannot be called with the model arguments given (width=3)"),
        (["--lr-schedule", "linear"], "invalid choice"),
        (["--lr-gamma", "0.5"], "only apply to --lr-schedule step"),
        (["--lr-schedule", "step", "--lr-gamma", "0"], "lr_gamma must be in (0, 1]"),
        (["--lr-schedule", "step", "--lr-step-size", "0"], "lr_step_size must be >= 1"),
        (["--lr-warmup-rounds", "-1"], "lr_warmup_rounds must be >= 0"),
        (["--lr-min", "0.01"], "only apply to --lr-schedule cosine"),
        (["--lr-schedule", "cosine", "--lr-min", "1"], "below the learning rate 0.05"),
        (["--lr-schedule", "cosine", "--lr-total-rounds", "5", "--lr-warmup-rounds", "5"],
         "must exceed lr_warmup_rounds"),
        (["--clip-grad-norm", "0"], "clip_grad_norm must be a positive number"),
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
    assert cfg.mode == "sync" and cfg.out_dir == Path("runs/cnn-digits")
    assert cfg.learning_rate == 0.05 and cfg.to_dict()["lr"] == 0.05


def _same_config(cli: TrainConfig, api: TrainConfig) -> None:
    """Every field, and the values derived from them, agree."""
    for f in fields(TrainConfig):
        assert getattr(cli, f.name) == getattr(api, f.name), f.name
    assert (cli.learning_rate, cli.out_dir, cli.storage_dir) == (
        api.learning_rate, api.out_dir, api.storage_dir)
    assert cli.to_dict() == api.to_dict()


def test_no_flags_give_the_api_defaults() -> None:
    """One source of defaults: the CLI without flags is ``TrainConfig()``, field by field,
    the learning rate and the output folder included."""
    _same_config(parse_config([]), TrainConfig())
    assert TrainConfig().out_dir == Path("runs/cnn-digits")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_has_one_default_lr_for_cli_and_api(optimizer: str) -> None:
    cli = parse_config(["--optimizer", optimizer])
    api = TrainConfig(optimizer=optimizer)  # type: ignore[arg-type]
    _same_config(cli, api)
    assert api.learning_rate == default_lr(optimizer) == (
        1e-3 if optimizer in ("adam", "adamw") else 0.05)


def test_the_output_folder_is_named_after_model_and_data_in_both() -> None:
    cli = parse_config(["--model", "mlp", "--data", "synthetic:8x3"])
    api = TrainConfig(model="mlp", data="synthetic:8x3")
    _same_config(cli, api)
    assert api.out_dir == Path(default_out("mlp", "synthetic:8x3")) == Path(
        "runs/mlp-synthetic_8x3")
    assert TrainConfig(out="elsewhere").out_dir == Path("elsewhere")


def test_every_flag_default_is_the_fields_default() -> None:
    """Each flag's dest is a TrainConfig field and its default is that field's default,
    except the CLI's own ``--help`` and ``--debug``."""
    defaults = TrainConfig()
    names = {f.name for f in fields(TrainConfig)}
    actions = {a.dest: a for a in build_parser()._actions if a.dest not in ("help", "debug")}
    assert set(actions) <= names
    assert names - set(actions) == {"progress"}
    for dest, action in actions.items():
        assert action.default == getattr(defaults, dest), dest


def _readme_flags() -> set[str]:
    """The flags the README's "Command-line flags" section lists."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Command-line flags", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", section))


def test_the_readme_lists_exactly_the_clis_flags() -> None:
    parser_flags = {option for action in build_parser()._actions
                    for option in action.option_strings if option.startswith("--")}
    negations = {f for f in parser_flags if f.startswith("--no-") and f"--{f[5:]}" in
                 parser_flags}  # --no-nesterov and the like: named with their flag
    assert _readme_flags() == parser_flags - negations


def test_new_flags_map_onto_the_config() -> None:
    cfg = parse_config(["--durability", "memory", "--shards", "auto", "--keep-raft-log",
                        "--momentum", "0.8", "--nesterov", "--weight-decay", "1e-4",
                        "--nonfinite-policy", "skip-round", "--timeout", "30"])
    assert (cfg.durability, cfg.shards, cfg.keep_raft_log) == ("memory", "auto", True)
    assert (cfg.momentum, cfg.nesterov, cfg.weight_decay) == (0.8, True, 1e-4)
    assert (cfg.nonfinite_policy, cfg.timeout_s) == ("skip-round", 30.0)
    assert parse_config(["--shards", "5"]).shards == 5
    assert cfg.to_dict()["durability"] == "memory"
    cfg = parse_config(["--lr-schedule", "cosine", "--lr-warmup-rounds", "3", "--lr-min",
                        "0.001", "--lr-total-rounds", "50", "--clip-grad-norm", "1.5"])
    assert (cfg.lr_schedule, cfg.lr_warmup_rounds, cfg.lr_min, cfg.lr_total_rounds) == (
        "cosine", 3, 0.001, 50)
    assert cfg.clip_grad_norm == 1.5
    assert parse_config(["--lr-schedule", "step", "--lr-step-size", "9", "--lr-gamma",
                         "0.5"]).lr_step_size == 9


def test_durability_and_shards_are_validated_in_the_api() -> None:
    assert TrainConfig().durability == "disk" and not TrainConfig().keep_raft_log
    with pytest.raises(ConfigError, match="durability must be one of disk, memory"):
        TrainConfig(durability="tape")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--shards auto"):
        TrainConfig(shards=0)
    with pytest.raises(ConfigError, match="shards must be"):
        TrainConfig(shards="all")  # type: ignore[arg-type]
    assert TrainConfig(shards="auto").shards == "auto"


def test_flags_map_onto_the_config(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "round-4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "round-4" / "manifest.json").write_text("{}")
    cfg = parse_config(["--mode", "ssp", "--staleness", "2", "--workers", "4",
                        "--backup-workers", "1", "--optimizer", "adam", "--gpu", "0.5",
                        "--out", str(tmp_path), "--resume", "--checkpoint-every", "7"])
    assert (cfg.mode, cfg.staleness, cfg.workers, cfg.backup_workers) == ("ssp", 2, 4, 1)
    assert cfg.optimizer == "adam" and cfg.learning_rate == 1e-3  # adam's default lr
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


def test_a_module_that_raises_on_import_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "half_written.py").write_text(
        "raise RuntimeError('config file missing')\n\ndef factory():\n    pass\n")
    (tmp_path / "bad_syntax.py").write_text("def load(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RAFTPS_DEBUG", raising=False)
    for argv, reason in [
        (["--model", "half_written:factory"], "cannot import module 'half_written' of model "
         "factory 'half_written:factory': importing it raised RuntimeError: config file missing"),
        (["--data", "bad_syntax:load"], "cannot import module 'bad_syntax' of loader "
         "'bad_syntax:load': importing it raised SyntaxError"),
    ]:
        with pytest.raises(SystemExit) as exc:
            parse_config(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert reason in err


def test_debug_raises_a_bad_flag_with_its_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAFTPS_DEBUG", raising=False)
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'") as exc:
        parse_config(["--model", "no_such_module_xyz:f", "--debug"])
    assert isinstance(exc.value.__cause__, ModelFactoryError)
    assert isinstance(exc.value.__cause__.__cause__, ImportError)
    monkeypatch.setenv("RAFTPS_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown data 'nope'"):
        parse_config(["--data", "nope"])
