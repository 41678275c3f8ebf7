"""Shared by both simulators' tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def quiet_raft_log() -> Iterator[None]:
    """Operator log lines of thousands of runs would only slow the runs down.

    The replay command prints them for the one seed that matters.
    """
    loggers = [logging.getLogger(name) for name in ("kvraft.raft", "kvraft.sim", "kvraft.leases")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
