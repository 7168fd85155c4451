"""``python -m jobs.export``: a sharded checkpoint (tensors cut into row pieces over two
shards) becomes one torch state_dict that loads strictly into the model; every mistake is
one line with exit 2 and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from jobs.export import main
from paramserver import OptimizerConfig, RoundCommand, ShardPlan, ShardStateMachine
from paramserver.checkpoint import checkpoint_state_dict, find_checkpoint, write_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def make_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


FULL = {k: v.detach().numpy().copy() for k, v in make_model().state_dict().items()}
PLAN = ShardPlan.build({k: tuple(v.shape) for k, v in FULL.items()}, 2, split_bytes=256)
OPT = OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9)


def trained_checkpoint(out: Path, rounds: int = 2) -> tuple[Path, dict[str, np.ndarray]]:
    """A checkpoint at ``rounds`` under ``out`` and the full tensors it holds."""
    machines = [ShardStateMachine(PLAN.pieces(s), part, OPT)
                for s, part in enumerate(PLAN.split(FULL))]
    for r in range(rounds):
        for m in machines:
            grads = {k: np.full(v.shape, r + 1, np.float32) for k, v in m.params().items()}
            m.apply(RoundCommand(round=r, kind="sync", samples=2, ranks=(0,),
                                 grads=grads).encode())
    path = write_checkpoint(out, rounds, PLAN, [m.export_state() for m in machines], OPT)
    return path, PLAN.join([m.params() for m in machines])


def test_pieces_over_shards_join_into_a_state_dict_torch_loads(tmp_path: Path) -> None:
    assert any("#" in p.key for s in range(PLAN.shards) for p in PLAN.pieces(s))  # row cuts
    checkpoint, full = trained_checkpoint(tmp_path / "run")
    target = tmp_path / "model.safetensors"
    assert main(["--checkpoint", str(checkpoint), "--out", str(target)]) == 0
    model = make_model()
    model.load_state_dict(load_file(str(target)))  # strict: every key, every shape
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), full[key])
    assert not np.array_equal(full["0.weight"], FULL["0.weight"])  # trained, not initial
    assert set(load_file(str(target))) == set(FULL)  # no optimizer state


def test_a_run_folder_means_its_latest_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trained_checkpoint(run, rounds=1)
    latest, full = trained_checkpoint(run, rounds=3)
    assert find_checkpoint(run) == latest == find_checkpoint(run / "checkpoints")
    assert find_checkpoint(latest) == latest
    assert find_checkpoint(tmp_path) is None
    target = tmp_path / "out" / "model.safetensors"  # its folder is created
    assert main(["--checkpoint", str(run), "--out", str(target)]) == 0
    for key, value in load_file(str(target)).items():
        np.testing.assert_array_equal(value.numpy(), full[key])
    np.testing.assert_array_equal(checkpoint_state_dict(latest)["2.bias"], full["2.bias"])


def _corrupt(run: Path) -> str:
    checkpoint, _ = trained_checkpoint(run)
    shard = checkpoint / "shard-1.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    return str(checkpoint)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda run: str(run / "nothing-here"), "holds no checkpoint"),
        (_corrupt, "SHA-256 does not match"),
    ],
    ids=["missing", "corrupt"],
)
def test_a_bad_checkpoint_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: object, reason: str
) -> None:
    source = setup(tmp_path / "run")  # type: ignore[operator]
    target = tmp_path / "model.safetensors"
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", source, "--out", str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m jobs.export: error: ")
    assert reason in err
    assert not target.exists()


def test_an_existing_out_is_replaced_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, full = trained_checkpoint(tmp_path / "run")
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(checkpoint), "--out", str(target)])
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(checkpoint), "--out", str(tmp_path)])  # a folder
    assert main(["--checkpoint", str(checkpoint), "--out", str(target), "--overwrite"]) == 0
    np.testing.assert_array_equal(load_file(str(target))["0.bias"].numpy(), full["0.bias"])


def test_runs_as_a_module(tmp_path: Path) -> None:
    checkpoint, _ = trained_checkpoint(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k != "RAFTPS_DEBUG"}
    done = subprocess.run([sys.executable, "-m", "jobs.export", "--checkpoint",
                           str(checkpoint), "--out", str(tmp_path / "m.safetensors")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "m.safetensors" in done.stdout
    assert json.loads((checkpoint / "manifest.json").read_text())["round"] == 2


def test_buffers_the_checkpoint_holds_are_exported_in_their_dtype(tmp_path: Path) -> None:
    """BatchNorm's running statistics (float32) and batch counter (int64) come out as
    they were cut, so the file loads strictly into a model with buffers."""
    from workers.model_state import model_state

    def batchnorm_model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6),
                                   torch.nn.Linear(6, 3))

    torch.manual_seed(0)
    trained = batchnorm_model()
    trained(torch.randn(8, 4))  # one training-mode forward moves the buffers
    state = model_state(trained)
    buffers = {k: "int64" if state[k].dtype == np.int64 else "float32" for k in state.buffers}
    plan = ShardPlan.build({k: v.shape for k, v in state.items()}, 2, buffers=buffers)
    machines = [ShardStateMachine(plan.pieces(s), part, OPT)
                for s, part in enumerate(plan.split(dict(state)))]
    checkpoint = write_checkpoint(tmp_path, 1, plan, [m.export_state() for m in machines], OPT)
    target = tmp_path / "model.safetensors"
    assert main(["--checkpoint", str(checkpoint), "--out", str(target)]) == 0
    exported = load_file(str(target))
    assert exported["1.num_batches_tracked"].dtype == torch.int64
    model = batchnorm_model()
    model.load_state_dict(exported)  # strict
    assert int(model[1].num_batches_tracked) == 1
    torch.testing.assert_close(model[1].running_var, trained[1].running_var, rtol=0, atol=0)
