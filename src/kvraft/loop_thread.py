"""An asyncio event loop in a daemon thread, driven from synchronous code.

The blocking :class:`kvraft.Client` runs its AsyncClient on one of these, and
the test proxies live on one so that plain (synchronous) pytest tests can use
them while their own code blocks; :meth:`EventLoopThread.run` is the bridge.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """An asyncio loop running in a daemon thread, driven from synchronous code.

    Plain asyncio, not uvloop, on purpose: uvloop schedules timers in whole
    milliseconds from a clock cached per loop iteration, which would blur the
    1-5 ms delays the test proxies' fault profiles promise; asyncio's timers
    use the monotonic clock. The blocking Client gains nothing from uvloop here
    either: it has one request in flight at a time.
    """

    def __init__(self, name: str = "kvraft-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = 30.0) -> T:
        """Run ``coro`` on the loop and wait for its result (not from the loop's thread).

        ``timeout_s=None`` waits as long as the coroutine takes.
        """
        future = self.submit(coro)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{coro!r} did not finish in {timeout_s}s") from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop; its future, for a caller that waits on its own terms."""
        assert threading.current_thread() is not self._thread, "would deadlock"
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the loop, join the thread and close the loop; idempotent."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10.0)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()
