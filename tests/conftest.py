"""Fixtures shared by the whole suite.

The cluster fixtures and the failure-report hook (server log tails) come from
``tests/support/cluster_fixtures.py``: ``make_cluster`` and ``kvraft_server_command``.
This file adds the stand-in server of ``tests/support/standin.py``, which
speaks the product's command line and a few trivial RPCs, for tests that need
real server processes without depending on the real server.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from kvraft.testing.processes import PORT_RANGE_ENV, port_range_share

pytest_plugins = ("tests.support.cluster_fixtures", "tests.support.certs")

STANDIN = Path(__file__).resolve().parent / "support" / "standin.py"

# A suite started as a background job (`make test &`, `nohup make test &`, a CI
# runner) inherits SIGINT ignored, and an ignored signal survives fork and exec:
# every process a test starts would ignore Ctrl-C too, since Python installs its
# KeyboardInterrupt handler only where SIGINT is at its default. The tests that
# Ctrl-C `kvraft watch` then waited 30 s for nothing (two fresh-clone runs of
# `make test` under nohup; the watch's SigIgn showed SIGINT). A handler of ours
# is reset to the default in a child, so children start as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def standin_command() -> list[str]:
    """The command that runs the stand-in instead of ``python -m kvraft``."""
    return [sys.executable, str(STANDIN)]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs two workers), give each worker ports of
    its own: ``reserve_port`` remembers reservations per process only."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and PORT_RANGE_ENV not in os.environ:
        share = port_range_share(int(worker[2:]), count)
        if share is not None:
            os.environ[PORT_RANGE_ENV] = share
