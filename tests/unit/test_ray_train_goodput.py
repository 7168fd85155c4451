"""Unit tests of the Ray Train goodput side's pure parts (no Ray is started)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.goodput_workload import FaultPlan, Workload, recovery_s
from bench.peers import ray_train_goodput as rtg
from bench.peers.ray_train_events import (
    SIDE,
    completion_time,
    event_line,
    kill_candidates,
    lost_steps,
    parse_events,
    rank_slice,
    read_events,
    side_run,
)
from bench.peers.ray_train_goodput import (
    FaultInjector,
    GoodputArgumentError,
    parse_args,
    plan_from_args,
)


def start(rank: int, pid: int, step: int, t: float) -> dict[str, object]:
    return {"event": "start", "rank": rank, "pid": pid, "step": step, "t": t}


def step(index: int, t: float) -> dict[str, object]:
    return {"event": "step", "step": index, "t": t}


def test_rank_slices_tile_each_global_batch_in_order() -> None:
    workers, batch = 2, 4
    covered: list[int] = []
    for s in range(3):
        for r in range(workers):
            lo, hi = rank_slice(s, r, batch, workers)
            covered.extend(range(lo, hi))
    assert covered == list(range(3 * workers * batch))
    assert rank_slice(3, 1, 1024, 2) == (3 * 2048 + 1024, 4 * 2048)


def test_rank_slice_rejects_a_rank_outside_the_group() -> None:
    with pytest.raises(ValueError, match=r"rank 2 is outside 0\.\.1"):
        rank_slice(0, 2, 4, 2)
    with pytest.raises(ValueError, match="step must be >= 0"):
        rank_slice(-1, 0, 4, 2)


def test_parse_events_leaves_out_a_line_being_written() -> None:
    text = (event_line(step(0, 1.0)) + event_line(step(1, 2.0))).decode() + '{"event":"st'
    assert parse_events(text) == [step(0, 1.0), step(1, 2.0)]
    assert parse_events("") == []


def test_read_events_of_a_missing_log_is_empty(tmp_path: Path) -> None:
    assert read_events(tmp_path / "absent.jsonl") == []
    path = tmp_path / "log.jsonl"
    path.write_bytes(event_line(start(0, 7, 0, 1.0)))
    assert read_events(path) == [start(0, 7, 0, 1.0)]


def test_completion_time_counts_distinct_steps_once() -> None:
    records = [step(0, 1.0), step(1, 2.0), start(0, 9, 1, 2.5), step(1, 3.0), step(2, 4.0)]
    assert completion_time(records, 3) == 4.0
    assert completion_time(records, 4) is None


def test_kill_candidates_wait_for_every_rank_and_a_step() -> None:
    records = [start(0, 10, 0, 1.0)]
    assert kill_candidates(records, 2, float("-inf")) is None  # rank 1 not started
    records.append(start(1, 11, 0, 1.1))
    assert kill_candidates(records, 2, float("-inf")) is None  # no step yet
    records.append(step(0, 1.5))
    assert kill_candidates(records, 2, float("-inf")) == [10, 11]
    assert kill_candidates(records, 2, 1.6) is None  # killed at 1.6: the group recovers
    records += [start(1, 21, 0, 2.0), start(0, 20, 0, 2.1)]
    assert kill_candidates(records, 2, 1.6) is None  # restarted, no step since
    records.append(step(0, 2.2))
    assert kill_candidates(records, 2, 1.6) == [20, 21]


def test_lost_steps_measure_the_killed_group_against_the_resumed_step() -> None:
    records = [
        start(0, 1, 0, 0.0), start(1, 2, 0, 0.0),
        *[step(s, 1.0 + s) for s in range(8)],  # steps 0..7; a checkpoint after step 4 (5)
        start(0, 3, 5, 20.0), start(1, 4, 5, 20.0),  # fault at 10: resumed from 5
        step(5, 21.0), step(6, 22.0),  # this group gets less far than the first
        start(0, 5, 5, 30.0), start(1, 6, 5, 30.0),  # fault at 25: resumed from 5
        step(5, 31.0),
    ]
    # 8 done - 5 resumed; then 7 done - 5 (not the 8 an earlier group reached); no restart
    assert lost_steps(records, [10.0, 25.0, 40.0]) == [3, 2, 0]


def test_lost_steps_count_a_step_logged_after_the_kill() -> None:
    # the allreduce of step 3 finished before the kill, rank 0 logged it just after
    records = [start(0, 1, 0, 0.0), step(2, 1.0), step(3, 2.01), start(0, 2, 2, 5.0)]
    assert lost_steps(records, [2.0]) == [2]


def test_lost_steps_are_zero_when_the_kill_came_right_after_a_checkpoint() -> None:
    records = [start(0, 1, 0, 0.0), step(0, 1.0), step(1, 2.0), start(0, 2, 2, 5.0)]
    assert lost_steps(records, [3.0]) == [0]


def fault(kind: str, t: float) -> dict[str, object]:
    return {"event": "fault", "kind": kind, "t": t}


def test_side_run_is_relative_to_the_side_start() -> None:
    records = [start(0, 1, 0, 102.0), start(1, 2, 0, 102.0), step(0, 103.0), step(1, 104.0),
               fault("worker", 105.0),
               start(0, 3, 1, 110.0), start(1, 4, 1, 110.0), step(1, 111.0), step(2, 112.0),
               fault("driver", 112.2), start(0, 5, 3, 120.0), start(1, 6, 3, 120.0),
               {"event": "done", "sha256": "ab", "t": 120.5}]
    run = side_run(records, t0=100.0, steps=3, faulted=True)
    assert run.side == SIDE and run.faulted
    assert run.step_times_s == [3.0, 4.0, 11.0, 12.0]
    assert run.first_step_s == 3.0 and run.wall_s == 12.0
    assert run.fault_times_s == pytest.approx([5.0, 12.2])
    assert run.fault_kinds == ["worker", "driver"]
    assert run.lost_steps == [1, 0]
    assert run.model_sha256 == "ab" and run.errors == []


def test_side_run_leaves_out_steps_a_doomed_group_logged_after_the_fault() -> None:
    # the driver died at 3.0; its workers finished steps 1 and 2 before they were killed
    records = [start(0, 1, 0, 0.0), step(0, 1.0), fault("driver", 3.0), step(1, 3.1),
               step(2, 3.2), start(1, 2, 1, 9.0), start(0, 3, 1, 9.5), step(1, 10.0),
               step(2, 11.0)]
    run = side_run(records, t0=0.0, steps=3, faulted=True)
    assert run.step_times_s == [1.0, 10.0, 11.0]
    assert run.wall_s == 11.0 and run.lost_steps == [2]
    assert recovery_s(run) == [7.0]


def test_side_run_of_an_unfinished_run_says_so() -> None:
    run = side_run([start(0, 1, 0, 1.0), step(0, 2.0)], t0=0.0, steps=3, faulted=False,
                   errors=["fit failed: boom"])
    assert math.isnan(run.wall_s) and run.model_sha256 == ""
    assert run.errors == ["fit failed: boom", "only 1 of 3 steps completed"]


def test_fault_injector_kills_the_running_group_and_skips_a_recovering_one(
        tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(event_line(r) for r in
                             [start(0, 10, 0, 1.0), start(1, 11, 0, 1.0), step(0, 2.0)]))
    killed: list[int] = []
    plan = FaultPlan(worker_kills_s=(0.0, 0.0), seed=3)
    injector = FaultInjector(plan, log, 2, kill=killed.append, not_before=0.0)
    injector.start()
    injector.join(timeout=30)
    assert not injector.is_alive()
    assert killed == [plan.victim(0, [10, 11])]
    assert len(injector.fault_times) == 1
    assert injector.skipped == [0.0]  # due right after the kill: no restart logged since
    logged = [r for r in read_events(log) if r["event"] == "fault"]
    assert logged == [fault("worker", injector.fault_times[0])]


def test_fault_injector_waits_for_the_group_to_run_again_after_a_driver_fault(
        tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(event_line(r) for r in
                             [start(0, 10, 0, 1.0), start(1, 11, 0, 1.0), step(0, 2.0),
                              fault("driver", 3.0)]))
    killed: list[int] = []
    injector = FaultInjector(FaultPlan(worker_kills_s=(0.0,)), log, 2, kill=killed.append,
                             not_before=0.0)
    injector.start()
    injector.join(timeout=30)
    assert killed == [] and injector.skipped == [0.0]


def test_fault_injector_does_not_repeat_kills_due_before_it_was_made(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(event_line(r) for r in
                             [start(0, 10, 0, 1.0), start(1, 11, 0, 1.0), step(0, 2.0)]))
    killed: list[int] = []
    injector = FaultInjector(FaultPlan(worker_kills_s=(5.0,)), log, 2, kill=killed.append,
                             not_before=10.0)  # the kill was due at 7.0, a previous driver's
    injector.start()
    injector.join(timeout=30)
    assert not injector.is_alive()
    assert killed == [] and injector.skipped == []


def test_fault_injector_stops_before_the_first_step(tmp_path: Path) -> None:
    killed: list[int] = []
    injector = FaultInjector(FaultPlan(worker_kills_s=(0.0,)), tmp_path / "none.jsonl", 2,
                             kill=killed.append)
    injector.start()
    injector.stop.set()
    injector.join(timeout=30)
    assert not injector.is_alive() and injector.fault_times == [] and killed == []


def test_parse_args_and_the_plan_they_ask_for(tmp_path: Path) -> None:
    args = parse_args(["--steps", "150", "--checkpoint-every", "50", "--kill-every", "10",
                       "--out", str(tmp_path)])
    workload, plan = plan_from_args(args)
    assert workload == Workload(steps=150)
    assert plan.worker_kills_s[:3] == (10.0, 20.0, 30.0)
    assert len(plan.worker_kills_s) == int(rtg.KILL_HORIZON_S // 10)
    clean = plan_from_args(parse_args(["--out", str(tmp_path)]))
    assert clean[1] == FaultPlan() and args.checkpoint_every == 50
    driver = plan_from_args(parse_args(["--driver-kill-at", "4", "--out", str(tmp_path)]))[1]
    assert driver == FaultPlan(driver_kill_s=4.0)


def test_a_driver_child_gets_the_same_workload_and_plan(tmp_path: Path) -> None:
    workload = Workload(steps=30, batch_per_worker=8, seed=2)
    plan = FaultPlan(worker_kills_s=(0.5, 1.25, 10.0), driver_kill_s=3.0, seed=4)
    command = rtg.driver_command(workload, plan, 7, tmp_path, "127.0.0.1:6379")
    assert command[1:3] == ["-m", "bench.peers.ray_train_goodput"]
    args = parse_args(command[3:])
    assert args.driver_child and args.address == "127.0.0.1:6379"
    assert args.checkpoint_every == 7 and args.out == tmp_path.resolve()
    child_workload, child_plan = plan_from_args(args)
    assert child_workload == workload
    assert child_plan.worker_kills_s == plan.worker_kills_s and child_plan.seed == plan.seed
    assert child_plan.driver_kill_s is None  # the child never kills its own driver


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
    (["--kill-every", "0"], "--kill-every must be > 0"),
    (["--batch-per-worker", "0"], "--batch-per-worker must be >= 1"),
    (["--driver-kill-at", "-1"], "--driver-kill-at must be >= 0"),
    (["--driver-child"], "--driver-child needs --address"),
    (["--kill-times", "1,x"], "expected comma-separated seconds"),
])
def test_parse_args_rejects_out_of_range_values(
        argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args([*argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err


def test_run_rejects_a_negative_checkpoint_period_before_touching_anything(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(GoodputArgumentError, match="checkpoint_every must be >= 0"):
        rtg.run(Workload(steps=1), FaultPlan(), -1, out, faulted=False)
    assert not out.exists()


def test_run_with_driver_kill_needs_a_driver_kill_time(tmp_path: Path) -> None:
    with pytest.raises(GoodputArgumentError, match=r"needs FaultPlan\.driver_kill_s"):
        rtg.run_with_driver_kill(Workload(steps=1), FaultPlan(), 10, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("end", [{"event": "done", "sha256": "ab", "t": 2.1},
                                 {"event": "capped", "step": 1, "t": 2.1}],
                         ids=["done", "capped at its wall-time limit"])
def test_fault_injector_kills_nothing_once_training_is_done(tmp_path: Path,
                                                            end: dict[str, object]) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(event_line(r) for r in
                             [start(0, 10, 0, 1.0), start(1, 11, 0, 1.0), step(0, 2.0), end]))
    killed: list[int] = []
    injector = FaultInjector(FaultPlan(worker_kills_s=(0.0,)), log, 2, kill=killed.append,
                             not_before=0.0)
    injector.start()
    injector.join(timeout=30)
    assert not injector.is_alive()
    assert killed == [] and injector.fault_times == []
