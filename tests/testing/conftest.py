"""The harness's own tests run every cluster on the stand-in server."""

from __future__ import annotations

import pytest


@pytest.fixture
def kvraft_server_command(standin_command: list[str]) -> list[str]:
    """``make_cluster`` starts the stand-in here, not the product."""
    return standin_command
