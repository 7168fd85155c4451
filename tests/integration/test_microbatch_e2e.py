"""``--micro-batches``: the same final model bytes for any number of workers, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import TrainConfig, elastic, train
from jobs.backend import RaftServerBackend

DATA = "synthetic:16x4x96x16"  # 16 features, 4 classes, 96 train, 16 test


def _model_bytes(out: Path, workers: int | str, **changes: object) -> bytes:
    settings: dict[str, object] = {
        "model": "mlp", "data": DATA, "workers": workers, "micro_batches": 6, "shards": 1,
        "replicas": 1, "epochs": 1, "max_rounds": 2, "global_batch": 24,
        "optimizer": "momentum", "lr": 0.05, "seed": 5, "out": str(out), "progress": False,
        "timeout_s": 120.0}
    settings.update(changes)
    result = train(TrainConfig(**settings), backend=RaftServerBackend())  # type: ignore[arg-type]
    assert result.rounds == settings.get("max_rounds")
    return result.model_path.read_bytes()


def test_one_to_four_workers_give_byte_identical_models(tmp_path: Path,
                                                        ray_session: None) -> None:
    """Six micro-batches (not a power of two) split 6, 3+3, 2+2+2 and 1+2+1+2 ways; the
    three-worker run uses strict BSP rounds, the others the pipelined loop."""
    models = {n: _model_bytes(tmp_path / f"w{n}", n, pipeline=n != 3) for n in (1, 2, 3, 4)}
    different = sorted(n for n, model in models.items() if model != models[1])
    assert not different, f"workers {different} differ from one worker"


def test_auto_workers_follow_the_cluster_size_with_the_same_bits(
        tmp_path: Path, ray_session: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers auto`` with a cluster whose CPU count changes every round (scripted, as
    nodes joining and leaving would): each round runs that many tasks, and the model bytes
    are those of one worker. Pipelined and strict BSP rounds both."""
    sizes = [3.0, 1.0, 6.0, 2.0, 4.0, 9.0]  # the cluster's CPUs at each round's launch
    fixed = _model_bytes(tmp_path / "fixed", 1, max_rounds=6, epochs=2)
    for pipeline in (True, False):
        reads = iter(sizes)
        monkeypatch.setattr(elastic, "_cluster_resources",
                            lambda reads=reads: {"CPU": next(reads)})
        monkeypatch.setattr(elastic, "REFRESH_S", 0.0)  # read the cluster for every round
        out = tmp_path / f"auto-{pipeline}"
        model = _model_bytes(out, "auto", max_rounds=6, epochs=2, pipeline=pipeline)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [row["contributors"] for row in rows] == [3, 1, 6, 2, 4, 6]
        assert model == fixed, f"pipeline={pipeline}"
