"""Unit tests of the node-loss scenario's pure parts: which node it removes, its command
line, its argument checks (no Ray is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.goodput_node_loss import (
    NodeLossArgumentError,
    Role,
    node_to_remove,
    parse_args,
    removal_note,
    run_raftps,
    run_ray_train,
)
from bench.goodput_workload import Workload

HEAD = "head0000"


def test_a_worker_node_hosting_a_leader_is_removed_before_others() -> None:
    hosted = {
        "aaaa0000": [Role("shard-0/replica-1")],
        "bbbb0000": [Role("shard-1/replica-0"), Role("shard-0/replica-2", leader=True)],
        "cccc0000": [Role("shard-1/replica-2")],
    }
    assert node_to_remove(hosted, HEAD) == "bbbb0000"


def test_the_head_is_never_removed_even_when_it_hosts_the_leaders() -> None:
    hosted = {
        HEAD: [Role("shard-0/replica-0", leader=True), Role("shard-1/replica-0", leader=True)],
        "cccc0000": [Role("shard-1/replica-1")],
        "aaaa0000": [Role("shard-0/replica-1")],
    }
    assert node_to_remove(hosted, HEAD) == "aaaa0000"  # no worker leads: the smallest id


def test_a_node_hosting_nothing_is_not_removed() -> None:
    hosted: dict[str, list[Role]] = {HEAD: [Role("RayTrainWorker pid 1")], "aaaa0000": [],
                                     "bbbb0000": [Role("RayTrainWorker pid 2")]}
    assert node_to_remove(hosted, HEAD) == "bbbb0000"


def test_no_node_is_removed_when_only_the_head_hosts_something() -> None:
    assert node_to_remove({HEAD: [Role("RayTrainWorker pid 1")], "aaaa0000": []}, HEAD) is None
    assert node_to_remove({}, HEAD) is None


def test_the_removal_note_names_the_node_and_what_it_hosted() -> None:
    note = removal_note("bbbb0000ffff", [Role("shard-1/replica-0"),
                                         Role("shard-0/replica-2", leader=True)])
    assert note == "removed node bbbb0000 hosting shard-1/replica-0, shard-0/replica-2 (leader)"


def test_arguments_of_each_side(tmp_path: Path) -> None:
    args = parse_args(["--side", "raftps", "--steps", "400", "--node-loss-at", "8",
                       "--out", str(tmp_path)])
    assert (args.side, args.steps, args.node_loss_at, args.out) == ("raftps", 400, 8.0, tmp_path)
    args = parse_args(["--side", "ray_train", "--node-loss-at", "2.5"])
    assert (args.checkpoint_every, args.steps, args.out) == (50, Workload().steps, None)
    args = parse_args(["--side", "ray_train", "--node-loss-at", "0", "--checkpoint-every", "0"])
    assert args.checkpoint_every == 0
    args = parse_args(["--side", "raftps"])  # the fault-free run on the same cluster
    assert args.node_loss_at is None


def test_a_node_loss_side_is_compared_with_a_fault_free_run_on_its_own_cluster(
    tmp_path: Path,
) -> None:
    """A multi-node Ray moves objects between the nodes' stores: the single-node raftps
    run would be a faster baseline for reasons that are not the fault."""
    from bench.goodput import CLEAN_OF, GoodputConfig, side_command

    cfg = GoodputConfig.quick()
    for side in ("raftps_node_loss", "ray_train_k50_node_loss"):
        assert side not in CLEAN_OF
        clean = side_command(side, cfg, tmp_path, faulted=False)
        faulted = side_command(side, cfg, tmp_path, faulted=True)
        assert "bench.goodput_node_loss" in clean and "--node-loss-at" not in clean
        assert faulted[:len(clean)] == clean and "--node-loss-at" in faulted


@pytest.mark.parametrize(("argv", "message"), [
    (["--side", "torch", "--node-loss-at", "1"], "invalid choice"),
    (["--side", "raftps", "--node-loss-at", "-1"], "--node-loss-at must be >= 0"),
    (["--side", "raftps", "--node-loss-at", "nan"], "--node-loss-at must be >= 0"),
    (["--side", "raftps", "--node-loss-at", "1", "--steps", "0"], "--steps must be >= 1"),
    (["--side", "raftps", "--node-loss-at", "1", "--checkpoint-every", "10"],
     "--checkpoint-every applies to --side ray_train only"),
    (["--side", "ray_train", "--node-loss-at", "1", "--checkpoint-every", "-5"],
     "--checkpoint-every must be >= 0"),
])
def test_bad_arguments_exit_with_usage(argv: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_settings_raise_before_any_cluster_starts(tmp_path: Path) -> None:
    with pytest.raises(NodeLossArgumentError, match="node_loss_s must be >= 0"):
        run_raftps(Workload(steps=4), -1.0, tmp_path / "raftps")
    with pytest.raises(NodeLossArgumentError, match="checkpoint_every must be >= 0"):
        run_ray_train(Workload(steps=4), 1.0, -1, tmp_path / "ray_train")
    assert not (tmp_path / "raftps").exists() and not (tmp_path / "ray_train").exists()
