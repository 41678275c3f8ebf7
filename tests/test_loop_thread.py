"""The client's loop thread leaves signals to the main thread.

Reference: kvraft.loop_thread (a Ctrl-C the kernel handed to the loop's
thread left ``kvraft watch`` waiting for good: tests/cli/test_watch_cli.py)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from kvraft.loop_thread import MAIN_THREAD_SIGNALS, EventLoopThread

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_sigmask"), reason="needs per-thread signal masks"
)


async def _mask() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_the_loop_thread_blocks_the_signals_the_main_thread_handles() -> None:
    before = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    loop = EventLoopThread()
    try:
        in_loop = loop.run(_mask())
    finally:
        loop.stop()
    assert signal.SIGINT in MAIN_THREAD_SIGNALS and signal.SIGTERM in MAIN_THREAD_SIGNALS
    assert in_loop >= MAIN_THREAD_SIGNALS
    assert set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) == before  # the caller's is back


BLOCKED_CALL = """
import sys
from kvraft import Client
client = Client(["127.0.0.1:9"], deadline=None, call_timeout_s=0.2)
print("calling", flush=True)
client.get("k")  # nobody listens there: retries forever
"""


def test_ctrl_c_ends_a_call_that_waits_forever() -> None:
    """SIGINT to the process, not to a thread: KeyboardInterrupt in the main thread."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_CALL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "calling\n"
        time.sleep(0.5)  # inside get(), waiting on the loop thread
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in stderr
