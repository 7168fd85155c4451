"""The preflight with the job's loss and metric: images, tokens and regression targets that
fit pass; a loss that does not import, returns the wrong shape or gets targets out of the
model's range exits 2 with one line, before Ray starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jobs import driver as driver_mod
from jobs.errors import ConfigError
from jobs.preflight import preflight
from jobs.train import main
from workers.data import Arrays
from workers.examples.char_lm import VOCAB, char_transformer, python_license

HERE = __name__


def images() -> Arrays:
    x = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    y = np.arange(8) % 3
    return x, y, x[:2], y[:2]


def regression() -> Arrays:
    x = np.random.default_rng(1).normal(size=(8, 4))
    y = x[:, :2] * 2.0
    return x, y, x[:2], y[:2]


def tokens_beyond_vocab() -> Arrays:
    x, y, xt, yt = python_license()
    yt = yt.copy()
    yt[0, 0] = VOCAB + 2
    return x, y, xt, yt


def summed_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, targets, reduction="sum")


def linear_4_to_2() -> nn.Module:
    return nn.Linear(4, 2)


def test_images_tokens_and_regression_that_fit_pass() -> None:
    assert preflight("cnn", images, seed=0).dataset.x_train.shape == (8, 1, 8, 8)
    lm = preflight(char_transformer, python_license, seed=0)
    assert lm.dataset.x_train.dtype == np.int64 and lm.dataset.y_train.ndim == 2
    reg = preflight("mlp", regression, seed=0, loss="mse")
    assert reg.dataset.y_train.dtype == np.float32 and reg.dataset.num_classes == 2


@pytest.mark.parametrize(
    ("model", "data", "loss", "metric", "match"),
    [
        (linear_4_to_2, regression, f"{HERE}:summed_mse", None,
         r"--loss .*summed_mse does not fit: .* returned shape \(\) for a micro-batch of 2 "
         r"samples; it must return per-sample values of shape \(2,\)"),
        (char_transformer, tokens_beyond_vocab, "cross_entropy", None,
         r"outputs 128 classes but data loader .*tokens_beyond_vocab has labels up to 130 "
         r"\(y_test\)"),
        (linear_4_to_2, regression, "cross_entropy", None,
         r"cross_entropy needs integer class ids as targets, got torch.float32"),
        (linear_4_to_2, regression, "mse", "accuracy", r"accuracy needs integer class ids"),
        (linear_4_to_2, regression, "no_such_module:fn", None,
         r"cannot import module 'no_such_module' of loss"),
        (lambda: nn.Linear(4, 3), regression, "mse", None,
         r"--loss mse does not fit: .* returned \(1, 3\).*mse needs outputs of the targets' "
         r"shape"),
    ],
    ids=["loss-shape", "token-out-of-range", "float-class-ids", "accuracy-on-floats",
         "loss-import", "mse-shape"],
)
def test_a_loss_or_target_that_does_not_fit_is_a_config_error(
        model: object, data: object, loss: str, metric: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        preflight(model, data, seed=0, loss=loss, metric=metric)  # type: ignore[arg-type]


def test_integer_features_the_model_cannot_take_name_the_dtype_rule() -> None:
    def int_pixels() -> Arrays:
        x = np.arange(32, dtype=np.uint8).reshape(8, 4)
        return x, np.arange(8) % 2, x[:2], np.arange(2)

    with pytest.raises(ConfigError, match=r"\(1, 4\) int64.*integer features are passed as "
                                          r"int64.*return float features"):
        preflight(lambda: nn.Linear(4, 2), int_pixels, seed=0)


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (["--loss", "no_such_module:fn"], "cannot import module 'no_such_module' of loss"),
        (["--loss", f"{HERE}:summed_mse", "--model", f"{HERE}:linear_4_to_2", "--data",
          f"{HERE}:regression"], "for a micro-batch of 2 samples"),
        (["--model", "workers.examples.char_lm:char_transformer", "--data",
          f"{HERE}:tokens_beyond_vocab"], "labels up to 130 (y_test)"),
        (["--metric", "f1"], "unknown metric 'f1'"),
    ],
    ids=["loss-import", "loss-shape", "targets-out-of-range", "metric-name"],
)
def test_the_cli_exits_2_with_one_line_before_ray(
        flags: list[str], text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def no_ray(address: str | None) -> None:
        raise AssertionError("Ray started for a job whose loss does not fit")

    monkeypatch.setattr(driver_mod, "ensure_ray", no_ray)
    out = tmp_path / "out"
    try:
        code = main(["--out", str(out), "--workers", "1", "--global-batch", "8", *flags])
    except SystemExit as exc:  # argparse's error path (check_names)
        code = int(exc.code or 0)
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], lines
    assert not out.exists()
