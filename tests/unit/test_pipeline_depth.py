"""The rounds a driver keeps in flight shrink for a large model, never below two."""

from __future__ import annotations

import pytest

from jobs.config import TrainConfig
from jobs.pipeline import PipelinedRounds
from jobs.pipeline_depth import DEPTH, MIN_DEPTH, pipeline_depth, round_bytes

GB = 1 << 30


def test_a_small_model_keeps_the_full_depth() -> None:
    assert pipeline_depth(1 << 20, 2, 7 * GB) == DEPTH == 3


def test_a_large_model_keeps_two_rounds_in_flight() -> None:
    # 124M parameters (496 MB) and two workers: 1.5 GB a round; 40 % of a 7 GB store
    # holds one, but the pipeline needs two
    assert round_bytes(496_000_000, 2) == 1_488_000_000
    assert pipeline_depth(496_000_000, 2, 7 * GB) == MIN_DEPTH == 2


def test_a_mid_sized_model_keeps_what_fits() -> None:
    per_round = round_bytes(100 << 20, 2)
    store = per_round * 2 / 0.4 + 1  # two rounds fit in the share, not three
    assert pipeline_depth(100 << 20, 2, store) == 2
    assert pipeline_depth(100 << 20, 2, per_round * 3 / 0.4 + 1) == 3


def test_an_unknown_store_keeps_the_full_depth() -> None:
    assert pipeline_depth(496_000_000, 2, None) == DEPTH


def test_the_pipeline_refuses_a_depth_below_one() -> None:
    with pytest.raises(ValueError, match="at least one round"):
        PipelinedRounds(config=TrainConfig(), server=None,  # type: ignore[arg-type]
                        launch=lambda r, p: ([], []), is_barrier=lambda r: False, depth=0)
