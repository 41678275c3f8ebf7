"""Which asyncio event loop a kvraft process runs: uvloop when it is installed.

uvloop is an optional dependency (no wheels on every platform), so each
entry point (server process, benchmarks) asks for it here and carries on with
plain asyncio without it; the transport works on either.
"""

from __future__ import annotations

import asyncio


def install_event_loop_policy() -> str:
    """Use uvloop when importable; return the name of the loop in use."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
