"""Which seeds each simulator's tests run: 1,000 in CI, more under ``make stress``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

from .simulator import Violation

R = TypeVar("R")

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
