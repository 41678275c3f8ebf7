"""What a RaftNode needs from the world, as parameters: a clock, a transport, workers.

RaftNode owns the order of I/O (persist, send, apply, advance) but not the I/O
itself. Time, the network and the threads that run blocking storage calls
come in through the three small interfaces below, so the same driver code
runs in a server process (the event loop's clock, the RPC layer, real
threads) and under the deterministic simulator in ``tests/sim`` (virtual
time, a seeded lossy network, a disk that is slow or dies mid-write). A
driver that built its own clock and sockets could only be tested by patching
its private attributes, and the simulator would exercise a copy of its loop
instead of the loop itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from kvraft.raft.messages import Message

T = TypeVar("T")


class Clock(Protocol):
    """Monotonic time in seconds, and sleeping on it."""

    def now_s(self) -> float:
        """Seconds since an arbitrary origin; never goes backwards."""
        ...

    async def sleep_s(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock's time (at once for 0 or less)."""
        ...


class PeerTransport(Protocol):
    """One-way delivery of Raft messages to the peers named by ``message.dst``.

    Raft tolerates loss, duplication and reordering, so a transport may drop a
    message (a peer that is down, a full queue) instead of blocking the Ready
    loop; it never raises for a message it cannot deliver.
    """

    def send(self, message: Message) -> bool:
        """Hand ``message`` to the network; False if it was dropped at once."""
        ...

    def close(self) -> None:
        """Drop what is queued and release connections; sending is over."""
        ...


class Workers(Protocol):
    """Where a node runs its blocking work, off the event loop.

    ``storage`` calls run one at a time, in the order they were made: a
    storage's calls are never concurrent (SqliteStorage's rule). ``encode``
    calls (snapshot encoding and writing its file) run apart from them, so a
    large snapshot never holds up a Ready's fsync.
    """

    async def storage(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the storage worker; its result or its exception."""
        ...

    async def encode(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the snapshot worker; its result or its exception."""
        ...

    def shutdown(self) -> None:
        """Wait for the storage worker's last call; abandon snapshot work in progress."""
        ...


class LoopClock:
    """The running event loop's monotonic clock: what a server process uses."""

    def now_s(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_s(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ThreadWorkers:
    """One thread for storage calls and one for snapshot work, named after the node."""

    def __init__(self, name: str) -> None:
        # One worker thread: storage calls are never concurrent.
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-io")
        # Snapshot encoding gets its own thread: on the storage thread it would hold
        # up every Ready's fsync for as long as it takes to encode the whole store.
        self._encoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-snap")

    async def storage(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def encode(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._encoder, fn, *args)

    def shutdown(self) -> None:
        self._io.shutdown(wait=True)
        # An encoding still running is abandoned: its snapshot would never be stored.
        self._encoder.shutdown(wait=False, cancel_futures=True)


class StallingWorkers:
    """Workers whose next storage call can be made to wait: a slow disk, on demand.

    Served only to servers started with ``--test-hooks`` (the ``raft.stall_disk``
    hook), so the adversarial suite can show on a real process that a leader
    survives a save longer than its election timeout. The wait runs on the
    storage thread itself, before the call, exactly where a stalled fsync would
    block; a production server never builds this class, and here the only cost
    on the path of a call is one attribute check.
    """

    def __init__(self, inner: Workers) -> None:
        self._inner = inner
        self._stall_s = 0.0  # seconds the next storage call waits; 0: none

    def stall(self, seconds: float) -> None:
        """Make the next storage call wait ``seconds`` on the storage thread first."""
        self._stall_s = seconds

    async def storage(self, fn: Callable[..., T], *args: object) -> T:
        stall_s, self._stall_s = self._stall_s, 0.0
        if not stall_s:
            return await self._inner.storage(fn, *args)

        def stalled() -> T:
            time.sleep(stall_s)
            return fn(*args)

        return await self._inner.storage(stalled)

    async def encode(self, fn: Callable[..., T], *args: object) -> T:
        return await self._inner.encode(fn, *args)

    def shutdown(self) -> None:
        self._inner.shutdown()
