"""``--micro-batches``: validated before Ray starts, one line naming the fix."""

from __future__ import annotations

import pytest

from jobs.config import TrainConfig
from jobs.errors import ConfigError
from jobs.train import parse_config


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--micro-batches", "0"], "micro_batches must be an int >= 1"),
        (["--global-batch", "12", "--micro-batches", "5"],
         "--global-batch 12 must be a multiple of --micro-batches 5"),
        (["--workers", "5", "--global-batch", "12", "--micro-batches", "4"],
         "--workers 5 exceeds --micro-batches 4"),
        (["--mode", "async", "--micro-batches", "4"], "use --mode sync or ssp"),
        (["--workers", "3", "--backup-workers", "1", "--micro-batches", "4"],
         "drop --backup-workers or --micro-batches"),
        (["--workers", "auto"], "--workers auto needs --micro-batches M"),
        (["--workers", "many"], "expected a worker count or 'auto', got 'many'"),
        (["--workers", "auto", "--micro-batches", "4", "--mode", "async"],
         "use --mode sync or ssp"),
    ],
)
def test_bad_micro_batches_exit_2_with_one_line(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert reason in err


def test_micro_batches_free_the_worker_count_from_dividing_the_global_batch() -> None:
    config = parse_config(["--workers", "4", "--global-batch", "12", "--micro-batches", "6"])
    assert (config.workers, config.micro_batches) == (4, 6)
    assert parse_config([]).micro_batches is None
    with pytest.raises(ConfigError, match="multiple of workers 4"):
        TrainConfig(workers=4, global_batch=6)
    with pytest.raises(ConfigError, match="multiple of --micro-batches"):
        TrainConfig(workers=2, global_batch=6, micro_batches=4)


def test_auto_workers_parse_with_micro_batches() -> None:
    config = parse_config(["--workers", "auto", "--global-batch", "12", "--micro-batches", "6"])
    assert (config.workers, config.max_workers, config.elastic) == ("auto", 6, True)
