"""The torchft side of bench.goodput: its batch slicing, step log, lost-step accounting,
command line and DDP gradient hook. No torchft process is started."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.goodput_workload import FaultPlan, Workload
from bench.peers import torchft_goodput
from bench.peers.torchft_goodput import LogTail, one_line, parse_args
from bench.peers.torchft_group import group_samples
from bench.peers.torchft_ledger import (
    Kill,
    StepEvent,
    completion_times,
    format_event,
    live_groups,
    lost_steps,
    parse_event,
    parse_log,
    redone_attempts,
    rejoin,
)

pytestmark = pytest.mark.unit


def commit(group: int, incarnation: int, step: int, t: float, participants: int = 2
           ) -> StepEvent:
    return StepEvent("commit", group, incarnation, step, t, participants)


def abort(group: int, incarnation: int, step: int, t: float) -> StepEvent:
    return StepEvent("abort", group, incarnation, step, t, 2)


def test_each_step_splits_its_global_batch_into_the_groups_halves() -> None:
    batch, groups = 4, 2
    assert group_samples(0, 0, batch) == (0, 4)
    assert group_samples(0, 1, batch) == (4, 8)
    assert group_samples(3, 1, batch) == (28, 32)
    covered = [i for step in range(5) for g in range(groups)
               for i in range(*group_samples(step, g, batch, groups))]
    assert covered == list(range(5 * groups * batch))  # contiguous, disjoint, in order


@pytest.mark.parametrize("step, group, batch", [(-1, 0, 4), (0, 2, 4), (0, -1, 4), (0, 0, 0)])
def test_bad_slice_arguments_are_refused(step: int, group: int, batch: int) -> None:
    with pytest.raises(ValueError):
        group_samples(step, group, batch)


def test_step_log_lines_round_trip_and_torn_lines_are_skipped() -> None:
    line = format_event("commit", 1, 2, 37, 1700000000.25, 2)
    assert parse_event(line) == StepEvent("commit", 1, 2, 37, 1700000000.25, 2)
    assert parse_event("commit 1 2 3") is None
    assert parse_event("commit 1 2 x 1.0 2") is None
    with pytest.raises(ValueError):
        format_event("done", 0, 0, 0, 0.0, 1)
    text = "\n" + format_event("commit", 0, 0, 0, 1.0, 2) + "\ncommit 0 0 1 2."
    assert parse_log(text) == [commit(0, 0, 0, 1.0)]  # the last line has no newline yet


def test_log_tail_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "group0.steps"
    tail = LogTail(path)
    assert tail.read() == []
    path.write_text(format_event("commit", 0, 0, 0, 1.0, 2) + "\ncommit 0 0 1")
    assert tail.read() == [commit(0, 0, 0, 1.0)]
    with path.open("a") as f:
        f.write(" 2.0 2\n")
    assert tail.read() == [commit(0, 0, 1, 2.0)]
    assert tail.read() == []


def test_a_step_is_completed_by_its_first_commit_and_aborts_do_not_count() -> None:
    events = [commit(0, 0, 0, 1.0), commit(1, 0, 0, 0.9), abort(0, 0, 1, 1.5),
              commit(0, 0, 1, 2.0)]
    assert completion_times(events) == {0: 0.9, 1: 2.0}


def scenario() -> tuple[Kill, list[StepEvent]]:
    """Both groups commit 0-4; group 1 dies at t=4.5; group 0 aborts step 5, redoes it and
    commits 5-9 alone; group 1's restarted process heals and commits 10-11 with group 0."""
    events = [commit(g, 0, s, float(s)) for s in range(5) for g in (0, 1)]
    events.append(abort(0, 0, 5, 4.6))
    events += [commit(0, 0, s, float(s) + 0.5, 1) for s in range(5, 10)]
    for s in (10, 11):  # the survivor's commit of the rejoin step lands just before
        events += [commit(0, 0, s, s + 0.49), commit(1, 1, s, s + 0.5)]
    return Kill(group=1, incarnation=0, t=4.5), events


def test_lost_steps_are_the_steps_the_killed_group_missed() -> None:
    kill, events = scenario()
    back = rejoin(kill, events)
    assert back is not None and (back.step, back.t) == (10, 10.5)
    assert lost_steps(kill, events) == 5  # steps 5..9; step 10 had both groups
    assert redone_attempts(kill, events) == 1


def test_a_group_that_never_rejoins_loses_every_later_step() -> None:
    kill, events = scenario()
    alone = [e for e in events if e.group == 0]
    assert rejoin(kill, alone) is None
    assert lost_steps(kill, alone) == 7  # steps 5..11


def test_commits_of_the_killed_process_do_not_count_as_a_rejoin() -> None:
    kill = Kill(group=1, incarnation=0, t=4.5)
    events = [commit(1, 0, 4, 4.6), commit(0, 0, 5, 5.0, 1)]  # a late line of the dead one
    assert rejoin(kill, events) is None
    assert lost_steps(kill, events) == 2


def test_a_restarted_group_is_live_only_once_its_new_process_commits() -> None:
    _, events = scenario()
    before = [e for e in events if e.t < 10.0]
    assert live_groups(before, {0: 0, 1: 1}) == [0]
    assert live_groups(events, {0: 0, 1: 1}) == [0, 1]
    assert live_groups(events, {0: 1, 1: 1}) == [1]


def test_command_line_builds_the_workload_and_the_kill_plan(tmp_path: Path) -> None:
    workload, faults, faulted, out = parse_args(["--steps", "150", "--out", str(tmp_path)])
    assert workload == Workload(steps=150) and not faulted and faults.worker_kills_s == ()
    assert out == tmp_path
    workload, faults, faulted, _ = parse_args(["--steps", "20", "--kill-every", "10",
                                               "--horizon", "35", "--seed", "3",
                                               "--batch-per-worker", "8", "--out", "o"])
    assert workload == Workload(steps=20, batch_per_worker=8, seed=3)
    assert faulted and faults == FaultPlan(worker_kills_s=(10.0, 20.0, 30.0), seed=3)


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--steps", "5", "--kill-every", "0"],
                                  ["--steps", "5", "--kill-every", "-1"], []])
def test_bad_command_lines_exit_with_usage(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args([*argv, "--out", "o"])
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_without_torchft_the_run_reports_why_and_starts_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    result = torchft_goodput.run(Workload(steps=2), FaultPlan(), tmp_path / "out", faulted=False)
    assert result.errors == ["ModuleNotFoundError: No module named 'torchft' "
                             "(pip install torchft==0.2.0)"]
    assert result.step_times_s == [] and not (tmp_path / "out").exists()


def test_unsupported_faults_are_reported_not_silently_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    result = torchft_goodput.run(Workload(steps=2), FaultPlan(node_loss_s=5.0), tmp_path,
                                 faulted=True)
    assert "node_loss_s and driver_kill_s are not injected" in result.errors[0]


def test_errors_are_one_line() -> None:
    assert one_line(RuntimeError("a\n  b")) == "RuntimeError: a b"
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"


class FakeWork:
    def __init__(self, ok: bool, inner: torch.futures.Future[torch.Tensor] | None) -> None:
        self.ok = ok
        self.fut = type("ManagedFuture", (), {"_fut": inner})()

    def wait(self) -> bool:
        return self.ok

    def get_future(self) -> object:
        return self.fut


def test_gradient_hook_uses_the_reduced_future_when_the_all_reduce_succeeded() -> None:
    pytest.importorskip("torchft")
    from bench.peers.torchft_ddp import gradient_future

    inner: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    assert gradient_future(FakeWork(True, inner), torch.zeros(2)) is inner


def test_gradient_hook_survives_a_failed_or_skipped_all_reduce() -> None:
    pytest.importorskip("torchft")
    from torchft.work import _DummyWork

    from bench.peers.torchft_ddp import gradient_future

    buffer = torch.ones(3)
    failed = gradient_future(FakeWork(False, None), buffer)  # gloo: connection closed by peer
    assert failed.done() and failed.value() is buffer
    skipped = gradient_future(_DummyWork(buffer), buffer)  # a later bucket of an errored step
    assert skipped.done() and skipped.value() is buffer


class FakeBucket:
    def __init__(self, buffer: torch.Tensor) -> None:
        self._buffer = buffer

    def buffer(self) -> torch.Tensor:
        return self._buffer


class FailingManager:
    """A manager whose all-reduce failed: gloo lost the peer, the error is recorded."""

    def allreduce(self, tensor: torch.Tensor) -> FakeWork:
        return FakeWork(False, None)


def test_the_ddp_hook_returns_the_local_bucket_where_torchfts_own_asserts() -> None:
    pytest.importorskip("torchft")
    from torchft.ddp import DistributedDataParallel as TorchftDDP

    from bench.peers.torchft_ddp import DistributedDataParallel

    bucket = FakeBucket(torch.ones(4))
    with pytest.raises(AssertionError):  # the survivor's backward pass would crash
        TorchftDDP._comm_hook(FailingManager(), bucket)
    fut = DistributedDataParallel._comm_hook(FailingManager(), bucket)  # type: ignore[arg-type]
    assert fut.value() is bucket.buffer()
