"""Fixtures for the RPC tests (the shared ones live in tests/conftest.py)."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Run the test once on plain asyncio and once on uvloop."""
    kind: str = request.param
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    return kind


@pytest.fixture
def rpc_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, capturing the transport's warnings."""
    caplog.set_level(logging.WARNING, logger="kvraft.rpc")
    return caplog
