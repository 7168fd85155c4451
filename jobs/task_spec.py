"""The ``TaskSpec`` every gradient task of a job shares, from the job's config."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.config import TrainConfig
from workers.gradient import Piece, TaskSpec
from workers.models import ModelSpec


def task_spec(config: TrainConfig, model: ModelSpec,
              layout: Sequence[Sequence[Piece]]) -> TaskSpec:
    """The model (its keyword arguments bound), seed, device and contribution clipping of
    ``config``, over the server's shard ``layout`` (per shard: its ``(key, tensor, start,
    stop)`` pieces)."""
    pieces = tuple(tuple((p[0], p[1], p[2], p[3]) for p in shard) for shard in layout)
    return TaskSpec(model=model, seed=config.seed, layout=pieces, use_gpu=config.gpu > 0,
                    clip_grad_norm=config.clip_grad_norm)
