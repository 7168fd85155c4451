"""``python -m bench.optim [--elements N] [--repeats R]``: one Adam step on N float32 elements.

Sides, all on the same data, interleaved (``bench.common.interleave``), each the median of
``repeats`` timed steps (after one untimed warm-up step):

- ``numpy-fma``: the previous ``paramserver.optim`` Adam, numpy with the float64 emulation of
  torch's fused multiply-adds (a private copy below, kept only for this comparison);
- ``torch-kernels``: today's ``paramserver.optim.adam_step`` (torch's CPU kernels, in place
  on the numpy arrays through ``torch.from_numpy``);
- ``torch.optim``: ``torch.optim.Adam(foreach=False)``, the reference both must match.

``bitwise`` says whether one step from a common start gives exactly torch.optim's parameters
(the old emulation differs by an ulp where torch's vectorised sqrt rounds differently).
Blocks for the whole run; needs about 20 arrays of N floats of memory. Prints a table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bench.common import interleave, markdown_table, median
from paramserver.optim import OptimizerConfig, adam_step, new_state

F32 = npt.NDArray[np.float32]
LR = 1e-3


# --- the previous implementation (numpy, float64 FMA emulation), for comparison only -------
def _old_fma(a: Any, b: Any, c: Any, out: F32 | None = None) -> F32:
    wide = np.multiply(a, b, dtype=np.float64)
    if out is None:
        fresh: F32 = np.add(wide, c, dtype=np.float64).astype(np.float32)
        return fresh
    np.add(wide, c, out=out, dtype=np.float64, casting="same_kind")
    return out


def _old_lerp_(start: F32, end: F32, weight: float) -> None:
    w = np.float32(weight)
    diff = np.subtract(end, start)
    if abs(float(w)) < 0.5:
        _old_fma(np.float64(w), diff, start, start)
    else:
        _old_fma(np.float64(w - np.float32(1.0)), diff, end, start)


def _old_adam_step(param: F32, grad: F32, state: dict[str, Any], lr: float,
                   cfg: OptimizerConfig) -> None:
    beta1, beta2 = cfg.betas
    step = int(state["step"]) + 1
    exp_avg, exp_avg_sq = state.get("exp_avg"), state.get("exp_avg_sq")
    if exp_avg is None or exp_avg_sq is None:
        exp_avg, exp_avg_sq = np.zeros_like(param), np.zeros_like(param)
    _old_lerp_(exp_avg, grad, 1 - beta1)
    scaled = np.multiply(grad, np.float32(1 - beta2))
    np.multiply(exp_avg_sq, np.float32(beta2), out=exp_avg_sq)
    _old_fma(scaled, grad, exp_avg_sq, exp_avg_sq)
    step_size = lr / (1 - beta1**step)
    denom = np.sqrt(exp_avg_sq)
    np.divide(denom, np.float32((1 - beta2**step) ** 0.5), out=denom)
    np.add(denom, np.float32(cfg.eps), out=denom)
    update = np.multiply(exp_avg, np.float32(-step_size))
    np.divide(update, denom, out=update)
    np.add(param, update, out=param)
    state.update(exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, step=np.asarray(step, np.int64))
# --------------------------------------------------------------------------------------------


def _numpy_side(start: F32, grad: F32, cfg: OptimizerConfig,
                step: Callable[[F32, F32, dict[str, Any], float, OptimizerConfig], None],
                ) -> tuple[Callable[[], float], F32]:
    """A timed runner over a private copy of ``start``; also the params after one step."""
    param, state = start.copy(), new_state(cfg)
    step(param, grad, state, LR, cfg)  # warm-up; creates the moment buffers
    first = param.copy()

    def run() -> float:
        t0 = time.perf_counter()
        step(param, grad, state, LR, cfg)
        return (time.perf_counter() - t0) * 1e3

    return run, first


def _torch_side(start: F32, grad: F32) -> tuple[Callable[[], float], F32]:
    param = torch.nn.Parameter(torch.from_numpy(start.copy()))
    param.grad = torch.from_numpy(grad)
    opt = torch.optim.Adam([param], lr=LR, foreach=False)
    opt.step()
    first = param.detach().numpy().copy()

    def run() -> float:
        t0 = time.perf_counter()
        opt.step()
        return (time.perf_counter() - t0) * 1e3

    return run, first


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--elements", type=int, default=20_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    start = rng.standard_normal(args.elements, dtype=np.float32)
    grad = rng.standard_normal(args.elements, dtype=np.float32)
    cfg = OptimizerConfig(kind="adam", lr=LR)
    sides = {"numpy-fma": _numpy_side(start, grad, cfg, _old_adam_step),
             "torch-kernels": _numpy_side(start, grad, cfg, adam_step),
             "torch.optim": _torch_side(start, grad)}
    times = interleave({name: run for name, (run, _) in sides.items()}, args.repeats)
    reference = sides["torch.optim"][1]
    base = median(times["numpy-fma"])
    rows = [[name, median(times[name]), base / median(times[name]),
             bool(np.array_equal(first, reference))] for name, (_, first) in sides.items()]
    print(f"\nAdam step, {args.elements:,} float32 elements, torch {torch.__version__} "
          f"({torch.get_num_threads()} intra-op threads, "
          f"{torch.backends.cpu.get_cpu_capability()}), median of {args.repeats}\n")
    print(markdown_table(["side", "ms/step", "speed-up vs numpy-fma", "bitwise = torch.optim"],
                         rows))


if __name__ == "__main__":
    main()
