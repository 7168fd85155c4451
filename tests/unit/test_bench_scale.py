"""Unit tests of bench.scale's pure parts and of bench.scale_config, bench.scale_probe and
bench.scale_report (config, CLI flags, log sizes, result shaping, summary.json's replica stats,
table) and of bench.models' sizes. No Ray: the child processes are replaced by scripted
answers."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from bench import scale, scale_probe
from bench.models import FACTORIES, HIDDEN, factory_spec, parameter_count
from bench.scale import (
    BenchSideError,
    config_from_args,
    peak_mb,
    raftps_args,
    round_breakdown,
    summarize,
)
from bench.scale_config import BenchConfigError, ScaleBenchConfig
from bench.scale_probe import raft_replica_match, replica_log_bytes, update_peaks
from bench.scale_report import breakdown_cell, error_lines, leader_cell, report
from bench.scale_summary import leader_changes, log_peak_over_state, summary_replica_stats


def test_model_sizes_are_near_their_names() -> None:
    targets = {"1m": 1.07e6, "6m": 5.8e6, "20m": 20e6, "124m": 124e6}
    for size, target in targets.items():
        assert parameter_count(HIDDEN[size]) == pytest.approx(target, rel=0.02)
    model = FACTORIES["1m"]()
    assert sum(p.numel() for p in model.parameters()) == parameter_count(HIDDEN["1m"])
    assert model(__import__("torch").zeros(3, 784)).shape == (3, 10)
    assert factory_spec("20m") == "bench.models:mlp20m"


def test_config_presets_and_validation() -> None:
    quick = ScaleBenchConfig.quick()
    assert quick.sizes == ("6m", "20m") and quick.repeats == 1 and 10 <= quick.rounds <= 20
    full = ScaleBenchConfig()
    assert full.sizes == ("6m", "20m", "124m") and full.repeats == 3
    assert set(full.sides) == {"raftps_r1", "raftps_r3_disk", "raftps_r3_memory", "ceiling",
                               "ray_ps_adam", "torch_single"}
    assert "ceiling" in quick.sides
    bad: list[dict[str, Any]] = [{"sizes": ("7m",)}, {"sizes": ()}, {"sides": ("a", "b")},
                                 {"sides": ("torch_single", "torch_single")},
                                 {"repeats": 0}, {"rounds": 1}, {"warmup": 0},
                                 {"side_timeout_s": 0.0}]
    for kwargs in bad:
        with pytest.raises(BenchConfigError):
            ScaleBenchConfig(**kwargs)


def test_config_from_args_applies_overrides_to_the_preset() -> None:
    cfg = config_from_args(scale._parse(["--quick", "--sizes", "20m", "--sides",
                                         "ceiling,raftps_r1, ray_ps_adam", "--rounds", "4"]))
    assert cfg.sizes == ("20m",) and cfg.sides == ("ceiling", "raftps_r1", "ray_ps_adam")
    assert cfg.rounds == 4 and cfg.repeats == 1
    with pytest.raises(BenchConfigError, match="unknown sides"):
        config_from_args(scale._parse(["--sides", "raftps_r2"]))


def test_raftps_args_pass_durability_to_r3_only_and_are_valid_cli_flags(tmp_path: Path) -> None:
    from jobs.train import build_parser

    r1 = raftps_args("6m", "raftps_r1", 17, tmp_path, "j", cli_flags={"--durability"})
    assert "--durability" not in r1 and "--keep-raft-log" not in r1
    assert r1[r1.index("--data") + 1] == f"synthetic:784x10x{17 * 256}x256"
    parsed = build_parser().parse_args(r1)
    assert (parsed.model, parsed.replicas, parsed.optimizer, parsed.lr) == (
        "bench.models:mlp6m", 1, "adam", 1e-3)
    assert parsed.global_batch == 256 and parsed.workers == 2 and parsed.epochs == 1
    memory = raftps_args("20m", "raftps_r3_memory", 5, tmp_path, "j",
                         cli_flags={"--keep-raft-log"})
    assert memory[memory.index("--durability") + 1] == "memory"
    assert memory[memory.index("--replicas") + 1] == "3" and "--keep-raft-log" in memory
    if "--durability" in scale.cli_flags():  # the flag another change adds
        assert build_parser().parse_args(memory).durability == "memory"


def test_replica_log_bytes_sums_each_replicas_files(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    assert replica_log_bytes(raft) == {}  # not created yet
    shard0, shard1 = raft / "job_shard-0", raft / "job_shard-1"
    (shard0 / "replica-0.db.segments").mkdir(parents=True)
    shard1.mkdir()
    (shard0 / "replica-0.db").write_bytes(b"x" * 100)
    (shard0 / "replica-0.db-wal").write_bytes(b"x" * 20)
    (shard0 / "replica-0.db.segments" / "1.seg").write_bytes(b"x" * 1000)
    (shard0 / "replica-1.db").write_bytes(b"x" * 7)
    (shard0 / "notes.txt").write_bytes(b"ignored")
    (shard1 / "replica-0.db").write_bytes(b"x" * 3)
    assert replica_log_bytes(raft) == {"shard-0/replica-0": 1120, "shard-0/replica-1": 7,
                                       "shard-1/replica-0": 3}


def test_update_peaks_keeps_maxima_and_matchers_pick_actors() -> None:
    peaks = {"a": 5}
    update_peaks(peaks, {"a": 3, "b": 2})
    update_peaks(peaks, {"a": 9})
    assert peaks == {"a": 9, "b": 2}
    match = raft_replica_match("job-1")
    assert match("ReplicaActor", "job-1/shard-0/replica-2") == "shard-0/replica-2"
    assert match("ReplicaActor", "job-10/shard-0/replica-2") is None
    assert match("DataWorker", "job-1/shard-0/replica-2") is None
    assert scale_probe.ps_match("ParameterServer", "") == "ps"
    ceiling = scale_probe.ceiling_match("c-1")
    assert ceiling("AdamShardActor", "c-1/shard-1") == "shard-1"
    assert ceiling("ShardActor", "c-1/shard-0") == "shard-0"
    assert ceiling("AdamShardActor", "c-10/shard-0") is None
    assert ceiling("ParameterServer", "c-1/shard-0") is None


def test_round_breakdown_takes_medians_after_warmup() -> None:
    records = [{"samples": 256, "samples_per_s": 25.6, "publish_s": 9.0, "compute_s": 9.0,
                "aggregate_s": 9.0, "commit_s": 9.0}]
    records += [{"samples": 256, "samples_per_s": 256 / wall, "publish_s": 0.01 * i,
                 "compute_s": 0.2, "aggregate_s": 0.02, "commit_s": 0.05}
                for i, wall in enumerate([0.3, 0.4, 0.5], start=1)]
    out = round_breakdown(records, 1)
    assert out["publish_s"] == pytest.approx(0.02) and out["compute_s"] == 0.2
    assert out["round_s"] == pytest.approx(0.4)
    assert math.isnan(round_breakdown([{"samples": 1, "samples_per_s": 1.0}], 0)["commit_s"])


def _run(rate: float, **extra: Any) -> dict[str, Any]:
    return {"samples_per_s": rate, "round_breakdown_s": {"round_s": 256 / rate}, **extra}


def test_summarize_shapes_sizes_sides_ratios_and_errors() -> None:
    cfg = ScaleBenchConfig(sizes=("6m",), sides=("raftps_r1", "raftps_r3_disk",
                                                  "ray_ps_adam", "torch_single"))
    logs = {"shard-0/replica-0": 2e6, "shard-1/replica-0": 4e6}
    raw = {"6m:raftps_r1": [100.0, 300.0], "6m:raftps_r3_disk": [], "6m:ray_ps_adam": [400.0],
           "6m:torch_single": [800.0]}
    details = {
        "6m:raftps_r1": [_run(100.0, peak_log_bytes=logs, leader_changes={"0": 1, "1": 0}),
                         _run(300.0, peak_log_bytes={"shard-0/replica-0": 6e6})],
        "6m:raftps_r3_disk": [{"error": "BenchSideError: no --durability"}],
        "6m:ray_ps_adam": [_run(400.0, peak_rss_bytes={"ps": 5e8})],
        "6m:torch_single": [_run(800.0)]}
    result = summarize(raw, details, cfg)["6m"]
    r1 = result["raftps_r1"]
    assert r1["samples_per_s"] == 200.0 and r1["repeats"] == [100.0, 300.0]
    assert r1["ratio_to_ray_ps_adam"] == 0.5 and r1["ratio_to_torch_single"] == 0.25
    assert r1["peak_log_mb_per_replica"] == {"shard-0/replica-0": 4.0, "shard-1/replica-0": 4.0}
    assert r1["leader_changes"] == [{"0": 1, "1": 0}, None] and r1["errors"] == []
    assert r1["round_breakdown_s"]["round_s"] == pytest.approx((256 / 100 + 256 / 300) / 2)
    failed = result["raftps_r3_disk"]
    assert math.isnan(failed["samples_per_s"]) and failed["errors"] == [
        "BenchSideError: no --durability"]
    assert failed["round_breakdown_s"] is None and failed["peak_rss_mb_per_replica"] is None
    assert result["ray_ps_adam"]["peak_rss_mb_per_replica"] == {"ps": 500.0}
    assert result["torch_single"]["ratio_to_torch_single"] == 1.0
    lone = summarize({"6m:raftps_r1": [1.0]}, {}, ScaleBenchConfig(sizes=("6m",),
                                                                   sides=("raftps_r1",)))
    assert math.isnan(lone["6m"]["raftps_r1"]["ratio_to_ray_ps_adam"])


def test_report_table_and_cells() -> None:
    cfg = ScaleBenchConfig(sizes=("20m",), sides=("raftps_r3_memory", "torch_single"))
    details = {"20m:raftps_r3_memory": [
        {"samples_per_s": 500.0, "peak_rss_bytes": {"shard-0/replica-0": 3e8,
                                                    "shard-0/replica-1": 4e8},
         "round_breakdown_s": {"publish_s": 0.01, "compute_s": 0.3, "aggregate_s": 0.02,
                               "commit_s": 0.1, "round_s": 0.5}, "leader_changes": [0, 2],
         "cpu_cores_by_role": {"leaders": 0.5, "followers": 0.75, "actors": 0.0,
                               "machine": 1.95}},
        {"error": "RuntimeError: boom"}]}
    results = summarize({"20m:raftps_r3_memory": [500.0], "20m:torch_single": [1000.0]},
                        details, cfg)
    lines = report(results).splitlines()
    assert lines[0].startswith("| size | side | samples/s | × Ray PS | × torch | × ceiling |")
    assert lines[2] == ("| 20m (20.0M) | raftps_r3_memory | 500 | - | 0.50 | - | "
                        "10/300/20/100 (500) | - | 400 | - | - | 0.50/0.75 (1.95) | 0,2 | "
                        "1/2 |")
    assert lines[3].startswith("| 20m (20.0M) | torch_single | 1,000 | - | 1.00 | - | - |")
    assert error_lines(results) == ["20m raftps_r3_memory: RuntimeError: boom"]
    assert breakdown_cell({"round_s": 0.25}) == "-/-/-/- (250)"
    assert leader_cell([None]) == "-" and leader_cell([{"s0": 1}, None]) == "s0:1; -"
    assert peak_mb([{"samples_per_s": 1.0}], "peak_log_bytes") is None


def test_run_side_records_child_errors_and_results(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ScaleBenchConfig(sizes=("6m",), sides=("raftps_r3_disk",), rounds=3, warmup=1)
    answers = [(1, "noise\n" + json.dumps({"side": "raftps_r3_disk", "error": "X: no"}), "tb"),
               (None, "", "hung"),
               (0, json.dumps({"samples_per_s": 42.0, "polls": 3}), "")]
    commands: list[list[str]] = []

    def fake_child(command: list[str], timeout_s: float) -> tuple[int | None, str, str]:
        commands.append(command)
        return answers.pop(0)

    monkeypatch.setattr(scale, "run_child", fake_child)
    details: dict[str, list[dict[str, Any]]] = {}
    with pytest.raises(BenchSideError, match="X: no"):
        scale.run_side("6m", "raftps_r3_disk", cfg, details)
    with pytest.raises(BenchSideError, match="timed out"):
        scale.run_side("6m", "raftps_r3_disk", cfg, details)
    assert scale.run_side("6m", "raftps_r3_disk", cfg, details) == 42.0
    runs = details["6m:raftps_r3_disk"]
    assert [r.get("error") for r in runs] == ["X: no", "timed out after 1800 s", None]
    assert runs[0]["stderr_tail"] == "tb" and runs[1]["returncode"] is None
    assert runs[2]["child_wall_s"] >= 0 and "--child" in commands[0]
    child = config_from_args(scale._parse(commands[0][3:]))
    assert (child.sizes, child.sides, child.rounds, child.warmup) == (
        ("6m",), ("raftps_r3_disk",), 3, 1)


def test_leader_changes_prefer_the_summary_then_the_last_metrics_line() -> None:
    records = [{"leader_changes": [0, 0]}, {"leader_changes": [1, 0]}]
    assert leader_changes({"leader_changes": [2, 3]}, records) == [2, 3]
    assert leader_changes({}, records) == [1, 0]
    assert leader_changes({}, [{"leader_changes": []}]) is None
    assert leader_changes({}, []) is None


def test_peak_poller_keeps_the_largest_log_seen(tmp_path: Path) -> None:
    group = tmp_path / "raft" / "j_shard-0"
    group.mkdir(parents=True)
    db = group / "replica-0.db"
    db.write_bytes(b"x" * 50)
    with scale_probe.peak_poller(tmp_path / "raft", None, period_s=0.01) as peaks:
        deadline = time.monotonic() + 5.0
        while peaks["polls"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        db.write_bytes(b"x" * 10)  # compacted: the peak stays
    assert peaks["peak_log_bytes"] == {"shard-0/replica-0": 50}
    assert peaks["poll_errors"] == [] and peaks["peak_rss_bytes"] == {}


def test_summary_replica_stats_key_replicas_and_take_the_largest_log_to_state() -> None:
    summary = {"leader_changes": [0, 1], "failovers": 2, "replicas": [
        [{"index": 0, "leader_changes": 0, "peak_log_bytes": 300, "snapshot_bytes": 100,
          "peak_rss_bytes": 7e8, "peak_private_bytes": 3e8, "disk_bytes": {"total_bytes": 400}},
         {"index": 2, "peak_log_bytes": 150, "snapshot_bytes": 100, "peak_rss_bytes": 6e8}],
        [{"index": 1, "peak_log_bytes": 50, "snapshot_bytes": 0, "peak_rss_bytes": 5e8}]]}
    stats = summary_replica_stats(summary)
    assert stats["summary_peak_log_bytes"] == {"shard-0/replica-0": 300,
                                               "shard-0/replica-2": 150,
                                               "shard-1/replica-1": 50}
    assert stats["summary_peak_rss_bytes"]["shard-0/replica-0"] == 7e8
    assert stats["summary_peak_private_bytes"] == {"shard-0/replica-0": 3e8}
    assert stats["snapshot_bytes"]["shard-1/replica-1"] == 0
    assert stats["log_peak_over_state"] == 3.0 and stats["failovers"] == 2
    assert log_peak_over_state({"a": 5}, {"a": 0}) is None
    assert summary_replica_stats({}) == {
        "failovers": None, "summary_peak_log_bytes": None, "summary_peak_rss_bytes": None,
        "summary_peak_private_bytes": None, "snapshot_bytes": None, "log_peak_over_state": None}
    cfg = ScaleBenchConfig(sizes=("6m",), sides=("raftps_r3_disk",))
    runs = [_run(100.0, **stats), _run(100.0, **summary_replica_stats(
        {"replicas": [[{"index": 0, "peak_log_bytes": 100, "snapshot_bytes": 100}]]}))]
    entry = summarize({"6m:raftps_r3_disk": [100.0, 100.0]}, {"6m:raftps_r3_disk": runs},
                      cfg)["6m"]["raftps_r3_disk"]
    assert entry["log_peak_over_state"] == 2.0 and entry["failovers"] == [2, None]
    assert entry["snapshot_mb_per_replica"]["shard-0/replica-0"] == pytest.approx(1e-4)
    row = report({"6m": {"raftps_r3_disk": entry}}).splitlines()[2]
    assert row.split(" | ")[10] == "2.00"  # log peak / state, after the private-memory column


def test_ceiling_side_ratios_and_the_ceiling_column() -> None:
    cfg = ScaleBenchConfig(sizes=("6m", "20m"), sides=("raftps_r1", "raftps_r3_disk", "ceiling",
                                                       "ray_ps_adam"))
    raw = {"6m:raftps_r1": [300.0], "6m:raftps_r3_disk": [100.0], "6m:ceiling": [400.0, 500.0],
           "6m:ray_ps_adam": [200.0], "20m:raftps_r1": [50.0], "20m:ceiling": []}
    details = {"6m:ceiling": [_run(400.0, peak_rss_bytes={"shard-0": 2e8, "shard-1": 3e8}),
                              _run(500.0, peak_rss_bytes={"shard-0": 4e8, "shard-1": 3e8})],
               "20m:ceiling": [{"error": "GetTimeoutError: slow"}]}
    results = summarize(raw, details, cfg)
    six = results["6m"]
    assert six["ceiling"]["samples_per_s"] == 450.0 and six["ceiling"]["ratio_to_ceiling"] == 1.0
    assert six["raftps_r1"]["ratio_to_ceiling"] == pytest.approx(300 / 450)
    assert six["raftps_r3_disk"]["ratio_to_ceiling"] == pytest.approx(100 / 450)
    assert six["ray_ps_adam"]["ratio_to_ceiling"] == pytest.approx(200 / 450)
    assert six["ceiling"]["ratio_to_ray_ps_adam"] == pytest.approx(450 / 200)
    assert six["ceiling"]["peak_rss_mb_per_replica"] == {"shard-0": 300.0, "shard-1": 300.0}
    assert math.isnan(results["20m"]["raftps_r1"]["ratio_to_ceiling"])  # its ceiling failed
    assert results["20m"]["ceiling"]["errors"] == ["GetTimeoutError: slow"]
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[:2]: line.strip("|").split("|")
            for line in report(results).splitlines()[2:]}
    cell = {k: v[5].strip() for k, v in rows.items()}  # the "× ceiling" column
    assert cell[("6m (5.8M)", "raftps_r1")] == "0.67"
    assert cell[("6m (5.8M)", "raftps_r3_disk")] == "0.22"
    assert cell[("6m (5.8M)", "ceiling")] == "-" and cell[("6m (5.8M)", "ray_ps_adam")] == "-"
    assert cell[("20m (20.0M)", "raftps_r1")] == "-"
    assert rows[("6m (5.8M)", "ceiling")][8].strip() == "300"  # peak RSS per shard actor


def test_ceiling_config_matches_the_raftps_job_and_the_child_measures_it() -> None:
    cfg = ScaleBenchConfig(sizes=("20m",), sides=("ceiling",), rounds=6, warmup=2, seed=3,
                           side_timeout_s=99.0)
    c = scale.ceiling_config("20m", cfg, actor_prefix="p")
    assert (c.shards, c.workers, c.batch_per_worker, c.global_batch) == (2, 2, 128, 256)
    assert (c.iterations, c.warmup, c.seed, c.timeout_s) == (6, 2, 3, 99.0)
    assert c.model is FACTORIES["20m"] and c.optimizer == "adam" and c.adam_lr == 1e-3
    assert c.data == "synthetic" and c.samples == 8 * 256 and c.actor_prefix == "p"
    raft = raftps_args("20m", "raftps_r1", 8, Path("/tmp/x"), "j")
    assert raft[raft.index("--data") + 1] == f"synthetic:784x10x{c.samples}x256"
    command = scale.side_command("20m", "ceiling", cfg)
    child = config_from_args(scale._parse(command[3:]))
    assert child.sides == ("ceiling",) and child.sizes == ("20m",)
    assert "ceiling_run" in scale.settings(cfg, quick=False)


def test_cpu_rates_are_mean_cores_between_first_and_last_samples() -> None:
    from bench.scale_probe import cpu_rates

    first = {"shard-0/replica-0@7": (10.0, 1.0), "<machine>": (10.0, 100.0),
             "once@9": (12.0, 5.0)}
    last = {"shard-0/replica-0@7": (14.0, 3.0), "<machine>": (14.0, 107.6), "once@9": (12.0, 5.0)}
    rates = cpu_rates(first, last)
    assert rates["cpu_cores"] == {"shard-0/replica-0": 0.5}  # sampled once: left out
    assert rates["machine_busy_cores"] == pytest.approx(1.9)
    # a replica restarted as pid 8: its new process counts from zero, its seconds add up
    first["shard-0/replica-0@8"], last["shard-0/replica-0@8"] = (15.0, 0.5), (18.0, 2.5)
    assert cpu_rates(first, last)["cpu_cores"]["shard-0/replica-0"] == pytest.approx(0.5)


def test_cpu_split_by_the_roles_the_summary_names() -> None:
    from bench.scale_cpu import cpu_cell, median_split, side_split

    summary = {"replicas": [[{"index": 0, "role": "LEADER"}, {"index": 1, "role": "FOLLOWER"},
                             {"index": 2, "role": "FOLLOWER"}]]}
    peaks = {"cpu_cores": {"shard-0/replica-0": 0.6, "shard-0/replica-1": 0.3,
                           "shard-0/replica-2": 0.25},
             "machine_busy_cores": 1.98}
    split = side_split(peaks, summary)
    assert split == {"leaders": 0.6, "followers": 0.55, "actors": 0.0, "machine": 1.98}
    assert cpu_cell(split, replicas=True) == "0.60/0.55 (1.98)"
    peer = side_split({"cpu_cores": {"ps": 0.8}, "machine_busy_cores": None})
    assert cpu_cell(peer, replicas=False) == "0.80"
    assert median_split([{"cpu_cores_by_role": split}, {"cpu_cores_by_role": {
        **split, "followers": 0.65}}, {"error": "x"}])["followers"] == pytest.approx(0.6)
    assert cpu_cell(None, replicas=True) == "-"
