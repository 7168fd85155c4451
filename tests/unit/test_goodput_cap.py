"""The wall-time cap on a peer's faulted goodput run: where it is asked for, how the ranks
agree to stop, and how a capped run is reported (its walls are bounds, not results)."""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path

import pytest

from bench.goodput import GoodputConfig, report, side_command, summarize
from bench.goodput_workload import SideRun, Workload
from bench.peers.ray_train_events import cap_deadline, side_run
from bench.peers.ray_train_goodput import parse_args


def _start(rank: int, pid: int, step: int, t: float) -> dict[str, object]:
    return {"event": "start", "rank": rank, "pid": pid, "step": step, "t": t}


def _step(index: int, t: float) -> dict[str, object]:
    return {"event": "step", "step": index, "t": t}


def test_quick_caps_only_ray_train_worker_kill_runs(tmp_path: Path) -> None:
    cfg = GoodputConfig.quick()
    assert cfg.peer_cap_s is not None
    for side in ("ray_train_k10", "ray_train_k50"):
        faulted = side_command(side, cfg, tmp_path, faulted=True)
        assert faulted[faulted.index("--max-wall") + 1] == str(cfg.peer_cap_s)
        assert "--max-wall" not in side_command(side, cfg, tmp_path, faulted=False)
    for side in ("raftps", "torchft", "ray_train_k50_driver_kill", "ray_train_k50_node_loss"):
        assert "--max-wall" not in side_command(side, cfg, tmp_path, faulted=True)
    assert "--max-wall" not in side_command("ray_train_k50", GoodputConfig(), tmp_path,
                                            faulted=True)


def test_the_cap_command_line_is_checked(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--max-wall", "30", "--out", str(tmp_path)]).max_wall == 30.0
    for argv, message in [(["--max-wall", "0"], "--max-wall must be > 0"),
                          (["--max-wall", "5", "--driver-kill-at", "3"],
                           "--max-wall cannot be combined with --driver-kill-at")]:
        with pytest.raises(SystemExit):
            parse_args([*argv, "--out", str(tmp_path)])
        assert message in capsys.readouterr().err


def test_the_deadline_counts_from_the_runs_first_step() -> None:
    assert cap_deadline([_start(0, 1, 0, 1.0)], 30.0) is None
    records = [_start(0, 1, 0, 1.0), _step(0, 2.5), _start(0, 2, 0, 9.0), _step(0, 10.0)]
    assert cap_deadline(records, 30.0) == 32.5  # a restarted group keeps the run's deadline


def test_a_capped_run_is_a_bound_not_an_error() -> None:
    records = [_start(0, 1, 0, 0.0), _start(1, 2, 0, 0.0), _step(0, 1.0), _step(1, 2.0),
               {"event": "fault", "kind": "worker", "t": 2.5},
               _start(0, 3, 0, 8.0), _start(1, 4, 0, 8.0), _step(0, 9.0),
               {"event": "capped", "step": 1, "t": 9.5}]
    run = side_run(records, t0=0.0, steps=10, faulted=True)
    assert run.capped and run.steps_done == 2 and run.errors == []  # steps 0 and 1
    assert run.notes == ["stopped at the wall-time cap with 2 of 10 steps completed"]
    uncapped = side_run(records[:-1], t0=0.0, steps=10, faulted=True)
    assert not uncapped.capped and uncapped.errors == ["only 2 of 10 steps completed"]


def test_summary_and_table_show_a_capped_run_as_bounds() -> None:
    workload = Workload(steps=10)
    clean = SideRun(side="ray_train", faulted=False, step_times_s=[float(t) for t in range(10)],
                    model_sha256="ab")
    faulted = SideRun(side="ray_train", faulted=True, step_times_s=[0.0, 36.0],
                      fault_times_s=[10.0], lost_steps=[1], capped=True, steps_done=1)
    entry = summarize(clean, faulted, workload)
    assert entry["capped"] and entry["steps_done"] == 1
    assert entry["wall_s_faulted"] == 36.0 and entry["goodput"] == 0.25
    assert not entry["byte_identical"]
    row = report({"ray_train_k50": entry}).splitlines()[-1]
    assert "| ≥ 36.00 | ≤ 0.25 |" in row
    whole = summarize(clean, clean, workload)
    assert not whole["capped"] and whole["steps_done"] == 10
    assert "≥" not in report({"x": whole})


def _agree(rank: int, port: int, deadlines: list[float | None], out: str) -> None:
    import torch.distributed as dist

    from bench.peers.ray_train_loop import _all_past

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=len(deadlines))
    try:
        Path(out, str(rank)).write_text(str(_all_past(deadlines[rank])))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("deadlines, expected", [
    ([0.0, None], "True"),  # one rank past its deadline stops both
    ([None, 1e18], "False"),
])
def test_the_ranks_agree_whether_the_deadline_passed(deadlines: list[float | None],
                                                     expected: str, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    spawn = multiprocessing.get_context("spawn")
    ranks = [spawn.Process(target=_agree, args=(rank, port, deadlines, str(tmp_path)))
             for rank in range(len(deadlines))]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(120)
    assert [process.exitcode for process in ranks] == [0] * len(ranks)
    assert [Path(tmp_path, str(r)).read_text() for r in range(len(deadlines))] == \
        [expected] * len(deadlines)
