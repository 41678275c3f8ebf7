"""Fixtures shared by the whole suite.

The cluster fixtures and the failure-report hook (server log tails) come from
``tests/support/cluster_fixtures.py``: ``make_cluster`` and ``kvraft_server_command``.
This file adds the stand-in server of ``tests/support/standin.py``, which
speaks the product's command line and a few trivial RPCs, for tests that need
real server processes without depending on the real server.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest_plugins = ("tests.support.cluster_fixtures", "tests.support.certs")

STANDIN = Path(__file__).resolve().parent / "support" / "standin.py"


@pytest.fixture
def standin_command() -> list[str]:
    """The command that runs the stand-in instead of ``python -m kvraft``."""
    return [sys.executable, str(STANDIN)]
