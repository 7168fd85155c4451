"""The bundled character-level transformer trains through the real path: int64 token
inputs (N, T), next-character targets (N, T), token-level cross-entropy, 2 workers on a
Raft-replicated shard; its loss falls within a few dozen rounds."""

from __future__ import annotations

import json
import math
from pathlib import Path

from jobs import TrainConfig, train
from jobs.backend import RaftServerBackend


def test_char_lm_loss_falls(tmp_path: Path, ray_session: None) -> None:
    cfg = TrainConfig(model="workers.examples.char_lm:char_transformer",
                      data="workers.examples.char_lm:python_license", workers=2, shards=1,
                      replicas=1, epochs=1, global_batch=32, max_rounds=30, optimizer="adam",
                      lr=3e-3, seed=5, out=str(tmp_path / "lm"), checkpoint_every=0,
                      progress=False, timeout_s=120.0)
    result = train(cfg, backend=RaftServerBackend())
    lines = [json.loads(line) for line in
             (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert abs(losses[0] - math.log(128)) < 1.0  # starts near uniform over 128 characters
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.8, losses
    assert 0.0 < result.final_test_accuracy <= 1.0  # per-character accuracy on the test text
