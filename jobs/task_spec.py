"""The ``TaskSpec`` every gradient task of a job shares, from the job's config."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.config import TrainConfig
from workers.gradient import PieceRows, TaskSpec
from workers.models import ModelSpec
from workers.objective import Objective, resolve_objective


def job_objective(config: TrainConfig) -> Objective:
    """The loss and metric of ``config`` (``TrainConfig.loss`` / ``metric``); raises
    ``LossError`` / ``MetricError`` for a spec that does not resolve."""
    return resolve_objective(config.loss, config.metric)


def task_spec(config: TrainConfig, model: ModelSpec,
              layout: Sequence[Sequence[PieceRows]]) -> TaskSpec:
    """The model (its keyword arguments bound), seed, device, contribution clipping, loss
    and metric of ``config``, over the server's shard ``layout`` (per shard: its ``(key,
    tensor, start, stop)`` pieces)."""
    pieces = tuple(tuple((p[0], p[1], p[2], p[3]) for p in shard) for shard in layout)
    return TaskSpec(model=model, seed=config.seed, layout=pieces, use_gpu=config.gpu > 0,
                    clip_grad_norm=config.clip_grad_norm, objective=job_objective(config))
