"""``python -m jobs.evaluate``: test loss and accuracy of saved weights, by the evaluation
the driver itself runs (``jobs.evaluation``); mistakes are one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from jobs.driver import evaluate
from jobs.evaluate import main
from jobs.evaluation import evaluate_model
from workers.data import load
from workers.models import build_model, resolve_model

DATA = "synthetic:12x3x64x40"


def model_for(name: str, seed: int = 0) -> torch.nn.Module:
    data = load(DATA)
    return build_model(resolve_model(name, in_features=data.in_features,
                                     num_classes=data.num_classes), seed)


def weights(tmp_path: Path, seed: int = 4) -> tuple[Path, dict[str, np.ndarray]]:
    """An mlp's state dict (built from another seed than the CLI's) saved as safetensors."""
    state = {k: v.detach().clone().contiguous() for k, v in model_for("mlp", seed)
             .state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    return path, {k: v.numpy() for k, v in state.items()}


def test_the_driver_and_the_cli_share_one_evaluation(tmp_path: Path) -> None:
    _, state = weights(tmp_path)
    data = load(DATA)
    result = evaluate_model(model_for("mlp"), state, data)
    assert evaluate(model_for("mlp"), state, data) == result.accuracy  # the driver's
    reference = model_for("mlp", seed=4)
    logits = reference(torch.from_numpy(data.x_test))
    expected = F.cross_entropy(logits, torch.from_numpy(data.y_test)).item()
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.samples == 40
    assert result.accuracy == pytest.approx(
        float((logits.argmax(1).numpy() == data.y_test).mean()))


def test_json_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, state = weights(tmp_path)
    expected = evaluate_model(model_for("mlp"), state, load(DATA))
    assert main(["--model", "mlp", "--data", DATA, "--weights", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["loss"] == expected.loss and record["accuracy"] == expected.accuracy
    assert record["samples"] == 40
    assert main(["--model", "mlp", "--data", DATA, "--weights", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert f"loss {expected.loss:.4f}" in out and f"accuracy {expected.accuracy:.4f}" in out


def test_a_checkpoint_folder_is_evaluated_like_its_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from paramserver import OptimizerConfig, ShardPlan, ShardStateMachine
    from paramserver.checkpoint import write_checkpoint

    _, state = weights(tmp_path)
    plan = ShardPlan.build({k: v.shape for k, v in state.items()}, 2, split_bytes=1024)
    opt = OptimizerConfig(kind="sgd", lr=0.1)
    machines = [ShardStateMachine(plan.pieces(s), part, opt)
                for s, part in enumerate(plan.split(state))]
    write_checkpoint(tmp_path / "run", 5, plan, [m.export_state() for m in machines], opt)
    assert main(["--model", "mlp", "--data", DATA, "--weights", str(tmp_path / "run"),
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["accuracy"] == evaluate_model(model_for("mlp"), state, load(DATA)).accuracy


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--weights", "extra.safetensors"], "holds 1 tensor(s) the model lacks"),
        (["--weights", "missing.safetensors"], "does not exist"),
        (["--weights", "."], "folder without a checkpoint"),
        (["--weights", "garbage.safetensors"], "not a readable safetensors file"),
        (["--weights", "small.safetensors"], "has shape"),
        (["--weights", "partial.safetensors"], "lacks 1 tensor(s) of the model"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--data", "synthetic:abc"], "synthetic"),
    ],
)
def test_a_mistake_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    flags: list[str], reason: str,
) -> None:
    path, state = weights(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors at all")
    small = {k: torch.zeros(2, 2) if k == "0.weight" else torch.from_numpy(v)
             for k, v in state.items()}
    save_file(small, str(tmp_path / "small.safetensors"))
    save_file({k: torch.from_numpy(v) for k, v in state.items() if k != "2.weight"},
              str(tmp_path / "partial.safetensors"))
    save_file({**{k: torch.from_numpy(v) for k, v in state.items()}, "extra": torch.zeros(1)},
              str(tmp_path / "extra.safetensors"))
    argv = ["--model", "mlp", "--data", DATA, "--weights", str(path)]
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        argv[argv.index(flag) + 1] = value
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m jobs.evaluate: error: ")
    assert reason in err


def test_the_training_loss_metric_and_dataset_flags(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--loss``, ``--metric`` and ``--dataset`` evaluate as training does: an npy dataset
    gives the same numbers as the arrays it holds, ``--metric none`` reports the loss only,
    and ``--loss mse`` with float targets is a regression."""
    from workers.objective import resolve_objective

    path, _ = weights(tmp_path)
    data = load(DATA)
    folder = tmp_path / "npy"
    folder.mkdir()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.save(folder / f"{name}.npy", getattr(data, name))
    base = ["--model", "mlp", "--weights", str(path), "--json"]
    assert main([*base, "--data", DATA]) == 0
    from_arrays = json.loads(capsys.readouterr().out)
    assert main([*base, "--dataset", f"npy:{folder}"]) == 0
    from_npy = json.loads(capsys.readouterr().out)
    assert from_npy["loss"] == from_arrays["loss"] and from_npy["accuracy"] == from_arrays[
        "accuracy"] and from_npy["data"] == f"npy:{folder}"
    assert main([*base, "--data", DATA, "--metric", "none"]) == 0
    no_metric = json.loads(capsys.readouterr().out)
    assert (no_metric["metric"], no_metric["metric_value"], no_metric["accuracy"]) == (
        "none", None, None)
    assert no_metric["loss"] == from_arrays["loss"]
    assert main(["--model", "mlp", "--weights", str(path), "--data", DATA,
                 "--metric", "none"]) == 0
    assert "accuracy" not in capsys.readouterr().out
    regression = tmp_path / "reg"
    regression.mkdir()
    targets = {"y_train": np.eye(3, dtype=np.float32)[data.y_train],
               "y_test": np.eye(3, dtype=np.float32)[data.y_test]}
    for name in ("x_train", "x_test"):
        np.save(regression / f"{name}.npy", getattr(data, name))
    for name, value in targets.items():
        np.save(regression / f"{name}.npy", value)
    assert main([*base, "--dataset", f"npy:{regression}", "--loss", "mse"]) == 0
    mse = json.loads(capsys.readouterr().out)
    model = model_for("mlp", seed=4)
    with torch.no_grad():
        out = model(torch.from_numpy(data.x_test))
    expected = resolve_objective("mse").loss.summed(out, torch.from_numpy(targets["y_test"]))
    assert mse["loss"] == pytest.approx(float(expected) / len(data.y_test), rel=1e-5)
    assert mse["metric"] == "none"


@pytest.mark.parametrize(("flags", "reason"), [
    (["--loss", "nosuch.module:fn"], "nosuch"),
    (["--metric", "bogus"], "bogus"),
    (["--dataset", "npy:/does/not/exist"], "/does/not/exist"),
])
def test_a_bad_loss_metric_or_dataset_is_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
        reason: str) -> None:
    path, _ = weights(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["--model", "mlp", "--weights", str(path), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err, err
