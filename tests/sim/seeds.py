"""What both simulators' tests share: which seeds they run (1,000 in CI, more under
``make stress``), how a failing seed fails the test, and the replay command."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from .simulator import Violation

R = TypeVar("R")

REPO = Path(__file__).resolve().parents[2]

CHUNK = 100
# 1,000 seeds in CI: 600 of 3 nodes, 400 of 5 nodes, in test cases of CHUNK seeds.
CI_RUNS = [(3, start) for start in range(0, 600, CHUNK)] + [
    (5, start) for start in range(0, 400, CHUNK)
]
STRESS_CHUNK = 1000


def stress_runs(seeds_of_3: int, seeds_of_5: int) -> list[tuple[int, int]]:
    """Test cases of STRESS_CHUNK seeds from 10,000 on: beyond those of CI."""
    return [(3, start) for start in range(10_000, 10_000 + seeds_of_3, STRESS_CHUNK)] + [
        (5, start) for start in range(10_000, 10_000 + seeds_of_5, STRESS_CHUNK)
    ]


def run_ids(runs: list[tuple[int, int]]) -> list[str]:
    return [f"n{nodes}-s{start}" for nodes, start in runs]


def run_seeds(run: Callable[[int, int], R], nodes: int, seeds: range) -> list[R]:
    """``run(seed, nodes)`` for every seed; the first Violation fails the test with its
    message (which ends with the replay command), without a traceback."""
    results = []
    for seed in seeds:
        try:
            results.append(run(seed, nodes))
        except Violation as violation:
            pytest.fail(str(violation), pytrace=False)
    return results


def run_replay(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m tests.sim.replay ARGS`` from the repository root, as a failure says."""
    return subprocess.run(
        [sys.executable, "-m", "tests.sim.replay", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
