"""Which sides ``python -m bench.goodput`` runs: those named, the quick set, or all."""

from __future__ import annotations

from bench.goodput import QUICK_SIDES, SIDES, chosen_sides


def test_quick_runs_the_headline_sides_and_the_full_run_every_side() -> None:
    assert chosen_sides(None, quick=True) == list(QUICK_SIDES)
    assert chosen_sides(None, quick=False) == list(SIDES)
    assert set(QUICK_SIDES) < set(SIDES)
    assert {"raftps", "ray_train_k50", "torchft"} <= set(QUICK_SIDES)


def test_named_sides_win_over_the_quick_set() -> None:
    assert chosen_sides(["ray_train_k10"], quick=True) == ["ray_train_k10"]
