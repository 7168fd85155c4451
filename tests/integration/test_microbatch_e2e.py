"""``--micro-batches``: the same final model bytes for any number of workers, end to end."""

from __future__ import annotations

from pathlib import Path

from jobs import TrainConfig, train
from jobs.backend import RaftServerBackend

DATA = "synthetic:16x4x96x16"  # 16 features, 4 classes, 96 train, 16 test


def _model_bytes(out: Path, workers: int, **changes: object) -> bytes:
    settings: dict[str, object] = {
        "model": "mlp", "data": DATA, "workers": workers, "micro_batches": 6, "shards": 1,
        "replicas": 1, "epochs": 1, "max_rounds": 2, "global_batch": 24,
        "optimizer": "momentum", "lr": 0.05, "seed": 5, "out": str(out), "progress": False,
        "timeout_s": 120.0}
    settings.update(changes)
    result = train(TrainConfig(**settings), backend=RaftServerBackend())  # type: ignore[arg-type]
    assert result.rounds == 2
    return result.model_path.read_bytes()


def test_one_to_four_workers_give_byte_identical_models(tmp_path: Path,
                                                        ray_session: None) -> None:
    """Six micro-batches (not a power of two) split 6, 3+3, 2+2+2 and 1+2+1+2 ways; the
    three-worker run uses strict BSP rounds, the others the pipelined loop."""
    models = {n: _model_bytes(tmp_path / f"w{n}", n, pipeline=n != 3) for n in (1, 2, 3, 4)}
    different = sorted(n for n, model in models.items() if model != models[1])
    assert not different, f"workers {different} differ from one worker"
