"""Client: the blocking facade of :class:`AsyncClient`.

It owns one event loop in a daemon thread and runs every call there, so one
``Client`` can be shared by many threads and there is a single implementation
of retries and ``Maybe`` (the async one).

``close()``, from any thread, ends the calls other threads are blocked in:
the AsyncClient's close cancels their retry loops on the loop thread, they
raise :class:`~kvraft.errors.ClientClosed`, and only then is the loop stopped
(a loop stopped first would leave those threads waiting for good). A lock
orders close against new calls, so none is started on a loop being stopped.

``watch`` is a generator driving :meth:`AsyncClient.watch` on the loop
thread, one ``__anext__`` per event asked for; closing the generator (or
leaving a ``for`` over it and dropping it) closes the async iterator there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl as ssl_module
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from kvraft.client.async_client import (
    DEFAULT_CALL_TIMEOUT_S,
    WATCH_POLL_WAIT_S,
    AsyncClient,
    ReadMode,
)
from kvraft.client.leases import KeptLease, Lease
from kvraft.errors import ClientClosed
from kvraft.kv_protocol import (
    DEFAULT_MAX_VALUE_BYTES,
    Compare,
    RangeResult,
    TxnRequest,
    TxnResult,
    WatchEvent,
)
from kvraft.lease_protocol import LeaseTtlResult
from kvraft.loop_thread import EventLoopThread

T = TypeVar("T")

# How long close() waits for the calls it ended to hand back ClientClosed.
CLOSE_WAIT_S = 1.0


class Client:
    """Blocking client of a kvraft cluster (thread-safe); same contract as AsyncClient."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        deadline: float | None = None,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        client_id: str | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        read: ReadMode = "log",
    ) -> None:
        """The arguments are :class:`~kvraft.AsyncClient`'s, ``token``, ``ssl`` and ``read``
        included."""
        self._async = AsyncClient(
            servers,
            deadline=deadline,
            call_timeout_s=call_timeout_s,
            client_id=client_id,
            max_value_bytes=max_value_bytes,
            token=token,
            ssl=ssl,
            read=read,
        )
        self._loop = EventLoopThread(name=f"kvraft-client-{self.client_id[:8]}")
        # Guards _closed and _in_flight: a call is started only while not closed.
        self._mutex = threading.Lock()
        self._closed = False
        self._in_flight: set[concurrent.futures.Future[Any]] = set()

    @property
    def client_id(self) -> str:
        return self._async.client_id

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._mutex:
            if self._closed:
                coro.close()
                raise ClientClosed(f"client {self.client_id[:8]} is closed")
            future = self._loop.submit(coro)
            self._in_flight.add(future)
        try:
            return future.result()
        finally:
            with self._mutex:
                self._in_flight.discard(future)

    def get(self, key: str, *, read: ReadMode | None = None) -> tuple[str, int]:
        """``(value, version)`` of ``key``; raises NoKey if it does not exist.

        ``read``: ``"log"`` or ``"index"`` for this call (None: the client's).
        """
        return self._run(self._async.get(key, read=read))

    def put(self, key: str, value: str, version: int, *, lease: int = 0) -> int:
        """Store ``value`` if ``key`` is at ``version``; returns the new version.

        ``lease``: attach the key to that lease (AsyncClient.put).
        """
        return self._run(self._async.put(key, value, version, lease=lease))

    def set(self, key: str, value: str, *, lease: int = 0) -> int:
        """Store ``value`` at ``key`` whatever its version; returns the new version."""
        return self._run(self._async.set(key, value, lease=lease))

    def lease_grant(self, ttl: int) -> Lease:
        """Grant a lease of ``ttl`` seconds (AsyncClient.lease_grant)."""
        return self._run(self._async.lease_grant(ttl))

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease; its TTL (AsyncClient.lease_keepalive)."""
        return self._run(self._async.lease_keepalive(lease_id))

    def lease_revoke(self, lease_id: int) -> int:
        """Revoke the lease, deleting its keys; how many (AsyncClient.lease_revoke)."""
        return self._run(self._async.lease_revoke(lease_id))

    def lease_ttl(self, lease_id: int, keys: bool = False) -> LeaseTtlResult:
        """The lease's TTLs and keys (AsyncClient.lease_ttl)."""
        return self._run(self._async.lease_ttl(lease_id, keys))

    def lease(self, ttl: int) -> SyncKeptLease:
        """``with client.lease(ttl) as lease:`` a lease renewed in the background (on the
        client's loop thread) until the block ends, then revoked; ``lease.lost`` says if
        it was lost meanwhile."""
        return SyncKeptLease(self, self._async.lease(ttl))

    def delete(self, key: str, version: int) -> int:
        """Delete ``key`` if it is at ``version``; returns the revision the delete made."""
        return self._run(self._async.delete(key, version))

    def delete_range(
        self, *, prefix: str | None = None, start: str | None = None, end: str | None = None
    ) -> int:
        """Delete every key with ``prefix``, or in ``[start, end)``; returns how many."""
        return self._run(self._async.delete_range(prefix=prefix, start=start, end=end))

    def range(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int = 0,
        keys_only: bool = False,
        read: ReadMode | None = None,
    ) -> RangeResult:
        """The keys with ``prefix``, or in ``[start, end)``, in order (AsyncClient.range)."""
        return self._run(
            self._async.range(
                prefix=prefix,
                start=start,
                end=end,
                limit=limit,
                keys_only=keys_only,
                read=read,
            )
        )

    def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnRequest] = (),
        failure: Sequence[TxnRequest] = (),
    ) -> TxnResult:
        """Compares, then one branch, atomically (AsyncClient.txn)."""
        return self._run(self._async.txn(compare, success, failure))

    def compact(self, revision: int) -> int:
        """Drop the watch history below ``revision``; its new start (AsyncClient.compact)."""
        return self._run(self._async.compact(revision))

    def watch(
        self,
        key: str | None = None,
        *,
        prefix: str | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
        poll_wait_s: float = WATCH_POLL_WAIT_S,
    ) -> Iterator[WatchEvent]:
        """Every change of ``key`` or ``prefix``, in revision order (AsyncClient.watch).

        An iterator; ``close()`` it (or ``contextlib.closing``) to stop early.
        Bad arguments raise here, before the first event is asked for.
        """
        events = self._async.watch(
            key,
            prefix=prefix,
            start_revision=start_revision,
            prev_kv=prev_kv,
            poll_wait_s=poll_wait_s,
        )
        return self._iterate(events)

    def _iterate(self, events: AsyncIterator[WatchEvent]) -> Iterator[WatchEvent]:
        # The step running on the loop now: a caller interrupted while waiting
        # for it (Ctrl-C) leaves it running, and the close must end it first.
        running: list[asyncio.Future[WatchEvent]] = []

        async def next_event() -> WatchEvent:
            step = asyncio.ensure_future(anext(events))
            running[:] = [step]
            return await step

        async def close() -> None:
            for step in running:
                if not step.done():
                    step.cancel()
                    with contextlib.suppress(BaseException):
                        await step
            await events.aclose()  # type: ignore[attr-defined]

        try:
            while True:
                try:
                    event = self._run(next_event())
                except StopAsyncIteration:
                    return
                yield event
        finally:
            with contextlib.suppress(ClientClosed):  # closed: the loop took it along
                self._run(close())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of :attr:`async_client` on the client's loop thread; its result.

        For the recipes (Lock with a ttl, Election) that are written once,
        on the AsyncClient, and wrapped here.
        """
        return self._run(coro)

    @property
    def async_client(self) -> AsyncClient:
        """The AsyncClient this wraps (use it only through :meth:`run`: it lives on the
        client's loop thread)."""
        return self._async

    def close(self) -> None:
        """End every call in flight, in every thread, with ClientClosed; stop the thread.

        Safe from any thread, idempotent. The calls end within about
        ``CLOSE_WAIT_S``: their retry loops are cancelled, not waited out.
        """
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            in_flight = list(self._in_flight)
        # Every call started before _closed was set is already queued on the
        # loop ahead of this close, so the close sees and cancels it.
        self._loop.run(self._async.close(), timeout_s=CLOSE_WAIT_S)
        concurrent.futures.wait(in_flight, timeout=CLOSE_WAIT_S)
        self._loop.stop()
        for future in in_flight:  # the loop is gone: nothing else can finish them
            if not future.done():
                future.set_exception(ClientClosed(f"client {self.client_id[:8]} is closed"))

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncKeptLease:
    """The blocking face of :class:`~kvraft.client.leases.KeptLease` (``Client.lease``).

    The renewals run on the client's loop thread, so they go on while the
    caller's thread blocks or computes; ``lost`` can be read from any thread.
    """

    def __init__(self, client: Client, kept: KeptLease) -> None:
        self._client = client
        self._kept = kept

    @property
    def id(self) -> int:
        return self._kept.id

    @property
    def ttl(self) -> int:
        return self._kept.ttl

    @property
    def lost(self) -> bool:
        return self._kept.lost

    @property
    def lost_reason(self) -> str | None:
        return self._kept.lost_reason

    def remaining_s(self) -> float:
        """Seconds the lease is surely live still, by this client's count."""

        async def remaining() -> float:
            return self._kept.remaining_s()

        return self._client.run(remaining())

    def __enter__(self) -> SyncKeptLease:
        self._client.run(self._kept.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ClientClosed):
            self._client.run(self._kept.stop())
