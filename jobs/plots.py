"""curves.png: training loss and accuracy against rounds (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Draw loss (left) and train/test accuracy (right) vs round into ``path``; returns it."""
    rounds = [r["round"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(rounds, [r["loss"] for r in records], lw=1)
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_yscale("log")
    ax_acc.plot(rounds, [r["accuracy"] for r in records], lw=0.8, alpha=0.6, label="train batch")
    tests = [r for r in records if "test_accuracy" in r]
    ax_acc.plot([r["round"] for r in tests], [r["test_accuracy"] for r in tests], "o-",
                label="test")
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
