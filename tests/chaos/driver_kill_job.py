"""Run by test_driver_kill.py as a driver of its own, connected to the test session's Ray
(``RAY_ADDRESS``): the job of ``tests.chaos.test_train_kill.config``, until it is killed."""

from __future__ import annotations

import sys
from pathlib import Path

import ray

from jobs import train
from jobs.backend import RaftServerBackend
from tests.chaos.test_train_kill import config

if __name__ == "__main__":
    ray.init(address=sys.argv[3], log_to_driver=False)
    train(config(Path(sys.argv[1]), sys.argv[2]), backend=RaftServerBackend())
