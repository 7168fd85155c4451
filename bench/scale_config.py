"""What ``bench.scale`` measures: the fixed job shape, the sizes and sides, ``ScaleBenchConfig``.

Every side trains the same job (``WORKERS`` workers, global batch ``GLOBAL_BATCH``, Adam at
``LR``); ``ScaleBenchConfig`` picks the sizes, sides, repeats and round counts and checks them
(``BenchConfigError``). ``BREAKDOWN_FIELDS`` are the parts of a round that ``metrics.jsonl``
times, in the order the results and the table list them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.models import HIDDEN

WORKERS = 2
SHARDS = 2  # jobs.train's default, passed explicitly
GLOBAL_BATCH = 256
LR = 1e-3
RAY_CPUS = 4  # logical CPUs of every Ray side, as in bench.train
TEST_SAMPLES = 256  # the epoch-end evaluation is untimed; keep it cheap
MB = 1e6
SIZES = tuple(HIDDEN)  # 1m (smoke only), 6m, 20m, 124m
FULL_SIZES = ("6m", "20m", "124m")
QUICK_SIZES = ("6m", "20m")
RAFTPS_SIDES: dict[str, tuple[int, str | None]] = {
    "raftps_r1": (1, None), "raftps_r3_disk": (3, "disk"), "raftps_r3_memory": (3, "memory")}
CEILING_SIDE = "ceiling"  # raftps' data plane without Raft: the raftps sides' upper bound
SIDES = (*RAFTPS_SIDES, CEILING_SIDE, "ray_ps_adam", "torch_single")
BREAKDOWN_FIELDS = ("publish_s", "compute_s", "aggregate_s", "commit_s")


class BenchConfigError(ValueError):
    """A benchmark setting is out of range or names an unknown size or side."""


def _check_names(kind: str, names: Sequence[str], known: Sequence[str]) -> None:
    if not names:
        raise BenchConfigError(f"pick at least one {kind} of {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BenchConfigError(f"unknown {kind}s {unknown}; pick from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise BenchConfigError(f"{kind}s {list(names)} name one twice")


@dataclass(frozen=True, kw_only=True)
class ScaleBenchConfig:
    """What to measure and how long (``--quick`` is the small preset)."""

    sizes: tuple[str, ...] = FULL_SIZES  # bench.models sizes, in run order
    sides: tuple[str, ...] = SIDES  # sides, in run order
    repeats: int = 3  # interleaved repeats of every (size, side) (>= 1)
    rounds: int = 20  # timed global batches per measurement (>= 2)
    warmup: int = 3  # untimed global batches first (>= 1: round 0 pays for start-up)
    seed: int = 0  # data and init seed
    side_timeout_s: float = 1800.0  # limit on one child process (start-up included)

    def __post_init__(self) -> None:
        _check_names("size", self.sizes, SIZES)
        _check_names("side", self.sides, SIDES)
        if self.repeats < 1:
            raise BenchConfigError("ScaleBenchConfig.repeats must be >= 1")
        if self.rounds < 2:
            raise BenchConfigError("ScaleBenchConfig.rounds must be >= 2 (a rate needs rounds)")
        if self.warmup < 1:
            raise BenchConfigError("ScaleBenchConfig.warmup must be >= 1: the first round "
                                   "pays for worker start-up on the raftps sides")
        if not self.side_timeout_s > 0:
            raise BenchConfigError("ScaleBenchConfig.side_timeout_s must be > 0")

    @classmethod
    def quick(cls) -> ScaleBenchConfig:
        return cls(sizes=QUICK_SIZES, repeats=1, rounds=15, warmup=2, side_timeout_s=300.0)
