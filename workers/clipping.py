"""Clipping a gradient task's contribution by its global norm (``--clip-grad-norm X``).

A task's contribution is the SUM ``g`` of the gradients of its ``n`` samples, one tensor per
model parameter (every shard's pieces together). Its mean ``g / n`` has the global L2 norm

    norm = || ( ||g_p / n||_2  for every parameter p, in the model's parameter order ) ||_2

computed in float32 on the task's device, one parameter at a time; the task then sends
``g * min(1, X / (norm + 1e-6))`` instead of ``g``. That coefficient is the one
``torch.nn.utils.clip_grad_norm_(params, X)`` applies to the mean gradient, so with one
worker (one contribution per round) the server steps with the clipped mean gradient of the
global batch, as a torch loop that clips after ``loss.mean().backward()`` does, up to the
float32 rounding of ``(g * c) / n`` against ``(g / n) * c``. With N workers each
contribution is clipped on its own, by its own mean's norm (per-worker clipping, not
global-batch clipping). A non-finite norm makes the contribution non-finite, which the
server's ``--nonfinite-policy`` then handles. The result depends on the inputs only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

CLIP_EPS = 1e-6
"""Added to the norm before dividing, as ``torch.nn.utils.clip_grad_norm_`` does."""


def mean_gradient_norm(grads: Mapping[str, torch.Tensor], samples: int) -> torch.Tensor:
    """The global L2 norm of ``grads / samples`` (a 0-d tensor), in ``grads``' order; each
    parameter's mean is a temporary of its own size."""
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1")
    norms = [torch.linalg.vector_norm(g / samples, 2.0) for g in grads.values()]
    total: torch.Tensor = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    return total


def clip_contribution(grads: Mapping[str, torch.Tensor], samples: int,
                      max_norm: float) -> float:
    """Scale the summed gradients ``grads`` of ``samples`` samples in place so that their
    mean's global norm is at most ``max_norm`` (see the module docstring); returns that norm
    before clipping. ``grads`` must be tensors the caller owns (they are modified)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm={max_norm} must be > 0")
    if not grads:
        return 0.0
    norm = mean_gradient_norm(grads, samples)
    coefficient = torch.clamp(max_norm / (norm + CLIP_EPS), max=1.0)
    for g in grads.values():
        g.mul_(coefficient)
    return float(norm)
