"""A dataset read by index in the jobs: the CLI flag, the preflight, evaluation and the task
input, each against the in-memory path with the same arrays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from jobs import api
from jobs.config import TrainConfig
from jobs.errors import ConfigError
from jobs.evaluation import batch_rows, evaluate_model
from jobs.preflight import preflight_dataset
from jobs.train import build_parser, parse_config
from workers.data import validate
from workers.datasets import ArrayDataset, open_dataset
from workers.errors import DataError
from workers.gradient import TaskSpec, _gradient_task
from workers.model_state import model_state
from workers.models import build_model, resolve_model

ROOT = Path(__file__).resolve().parents[2]


def arrays(n: int = 48, m: int = 12, width: int = 6) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n + m, width)).astype(np.float32)
    y = (np.arange(n + m) % 3).astype(np.int64)
    return x[:n], y[:n], x[n:], y[n:]


def npy_dir(root: Path, data: tuple[np.ndarray, ...] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(("x_train", "y_train", "x_test", "y_test"), data or arrays(),
                         strict=True):
        np.save(root / f"{name}.npy", arr)
    return root


class Odd:
    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.zeros(6 if i else 7, np.float32), 0


def odd_items() -> dict[str, object]:
    return {"train": Odd(), "test": Odd()}


def raising() -> dict[str, object]:
    raise OSError("bucket not mounted")


def test_help_lists_the_dataset_flag_and_it_excludes_data(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert "--dataset" in build_parser().format_help()
    with pytest.raises(SystemExit) as info:
        parse_config(["--data", "digits", "--dataset", "npy:/x"])
    assert info.value.code == 2
    assert "not allowed with argument --data" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="give --data or --dataset, not both"):
        TrainConfig(data="synthetic", dataset="npy:/x")
    assert TrainConfig(dataset="npy:/data/img").out_dir == Path("runs/cnn-npy_data_img")


def test_a_bad_npy_directory_exits_2_with_one_line_before_anything_runs(
        tmp_path: Path) -> None:
    root = npy_dir(tmp_path / "d", (*arrays()[:3], np.zeros(5, np.int64)))
    run = subprocess.run([sys.executable, "-m", "jobs.train", "--dataset", f"npy:{root}",
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert "x_test.npy has 12 rows but y_test.npy has 5" in run.stderr
    assert not (tmp_path / "out").exists()


def test_preflight_refuses_items_of_different_shapes_as_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"different shapes.*item 0 is x \(7,\)"):
        preflight_dataset("mlp", f"{__name__}:odd_items", seed=0)
    with pytest.raises(DataError, match=r"raised OSError: bucket not mounted"):
        preflight_dataset("mlp", raising, seed=0)


def test_preflight_checks_the_model_against_the_dataset(tmp_path: Path) -> None:
    spec = f"npy:{npy_dir(tmp_path / 'd')}"
    opened = preflight_dataset(lambda: nn.Linear(6, 3), spec, seed=0)
    assert opened.num_classes == 3 and opened.n_train == 48
    with pytest.raises(ConfigError, match=r"outputs 2 classes but .* labels up to 2"):
        preflight_dataset(lambda: nn.Linear(6, 2), spec, seed=0)
    with pytest.raises(ConfigError, match="fails on one sample"):
        preflight_dataset(lambda: nn.Linear(5, 3), spec, seed=0)


def test_api_refuses_a_misfit_dataset_before_ray(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ray(address: str | None) -> None:
        raise AssertionError("Ray started for an npy dataset's preflight")

    monkeypatch.setattr(api, "ensure_ray", no_ray)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="outputs 2 classes"):
        api.train(TrainConfig(dataset=f"npy:{npy_dir(tmp_path / 'd')}", out=str(out)),
                  model=lambda: nn.Linear(6, 2))
    assert not out.exists()
    with pytest.raises(ConfigError, match="two sources"):
        api.train(TrainConfig(), data=arrays, dataset=odd_items)


def test_evaluation_by_index_matches_the_in_memory_one(tmp_path: Path) -> None:
    data = validate(arrays())
    opened = open_dataset(f"npy:{npy_dir(tmp_path / 'd')}")
    spec = resolve_model("mlp", in_features=6, num_classes=3)
    model = build_model(spec, 0)
    state = model_state(model)
    assert evaluate_model(model, state, opened) == evaluate_model(model, state, data)
    assert batch_rows(16) == 4096 and batch_rows(1 << 30) == 1
    assert batch_rows(1 << 20) == 64  # 64 MiB of samples per forward at most


def test_a_task_reading_by_index_returns_the_same_bits(tmp_path: Path) -> None:
    """The task's two inputs: the training arrays, or a dataset handle with the indices;
    the same schedule slice gives byte-identical gradients and metrics."""
    x, y, _, _ = arrays()
    opened = open_dataset(f"npy:{npy_dir(tmp_path / 'd')}")
    model_spec = resolve_model("mlp", in_features=6, num_classes=3)
    model = build_model(model_spec, 0)
    params = {k: np.asarray(v) for k, v in model_state(model).items()}
    layout = (tuple((k, k, 0, int(v.shape[0]) if v.ndim else 0) for k, v in params.items()),)
    task = TaskSpec(model=model_spec, seed=0, layout=layout)
    idx = np.array([40, 3, 17, 17, 22, 9])
    *in_memory, m1 = _gradient_task(task, 2, 1, x, y, idx, params)
    *by_index, m2 = _gradient_task(task, 2, 1, opened.task_data, None, idx, params)
    for (n1, g1), (n2, g2) in zip(in_memory, by_index, strict=True):  # type: ignore[misc]
        assert n1 == n2 and g1.keys() == g2.keys()
        assert all(g1[k].tobytes() == g2[k].tobytes() for k in g1)
    assert (m1.loss_sum, m1.correct) == (m2.loss_sum, m2.correct)  # type: ignore[attr-defined]


def test_a_user_dataset_without_a_fast_path_is_scanned_for_its_classes() -> None:
    x, y, xt, yt = arrays()

    class Plain:
        def __init__(self, xs: np.ndarray, ys: np.ndarray) -> None:
            self.inner = ArrayDataset(xs, ys)

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            return self.inner[i]

    opened = open_dataset(lambda: (Plain(x, y + 4), Plain(xt, yt)))
    assert opened.num_classes == 7 and opened.label_ranges()["y_train"] == (4, 6)
    assert torch.equal(torch.from_numpy(opened.first_sample()[0]), torch.from_numpy(x[:1]))
