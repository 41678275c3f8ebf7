"""The client's small promises, on real sockets against a stand-in server (tests/client/fake_kv).

- a put sent once never raises ``Maybe``; a put whose reply was lost may;
- ``close()`` ends every call in flight, in every thread, with ClientClosed;
- ``Lock.acquire`` that raises never leaves a holder nobody owns.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator
from typing import Any

import pytest

from kvraft import ClientClosed, LockStateUnknown, Maybe, VersionMismatch, WrongLeader
from kvraft.client.async_client import AsyncClient, may_have_applied
from kvraft.client.client import Client
from kvraft.client.lock import FREE, Lock, LockNotHeld
from kvraft.errors import (
    CallTimeout,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    NotLeader,
    NotSent,
)
from kvraft.testing.waiting import wait_until

from .fake_kv import FakeServer, dead_address

CLOSE_BOUND_S = 1.0


@pytest.fixture
def server() -> Generator[FakeServer]:
    srv = FakeServer()
    try:
        yield srv
    finally:
        srv.stop()


def seed(server: FakeServer, key: str, value: str, version: int) -> None:
    server.run(lambda: server.kv.store.__setitem__(key, (value, version)))


def stored(server: FakeServer, key: str) -> tuple[str, int] | None:
    result: tuple[str, int] | None = server.run(lambda: server.kv.store.get(key))
    return result


# ------------------------------------------------------------- Maybe only when unknown


@pytest.mark.parametrize(
    ("failure", "unknown"),
    [
        (ConnectFailed("refused"), False),
        (ConnectTimeout("no connection in time"), False),
        (NotSent("closed before the write"), False),
        (NotLeader(""), False),
        (CallTimeout("no reply in time"), True),
        (ConnectionLost("lost after the write"), True),
        (WrongLeader("lost leadership while waiting"), True),
    ],
)
def test_only_attempts_that_may_have_run_count_toward_maybe(
    failure: Exception, unknown: bool
) -> None:
    assert may_have_applied(failure) is unknown


def test_a_put_after_refused_servers_is_sent_once_and_never_maybe(server: FakeServer) -> None:
    """Refused connections never carried the put: VersionMismatch stays VersionMismatch."""
    seed(server, "k", "a", 1)
    with Client([dead_address(), dead_address(), server.address], call_timeout_s=0.5) as c:
        with pytest.raises(VersionMismatch) as info:
            c.put("k", "b", 0)
        assert not isinstance(info.value, Maybe)
        assert c.put("k", "b", 1) == 2


def test_a_put_after_a_connect_timeout_is_sent_once_and_never_maybe(server: FakeServer) -> None:
    """A call timeout spent connecting (a black-holed server) is "not sent", not "unknown"."""
    seed(server, "k", "a", 1)
    blackhole = dead_address()
    black_port = int(blackhole.rsplit(":", 1)[1])

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        original = loop.create_connection

        async def connect(factory: Any, host: str, port: int, **kwargs: Any) -> Any:
            if port == black_port:
                await asyncio.Event().wait()  # the SYN goes nowhere
            return await original(factory, host, port, **kwargs)

        loop.create_connection = connect  # type: ignore[method-assign,assignment]
        async with AsyncClient([blackhole, server.address], call_timeout_s=0.2) as ac:
            with pytest.raises(VersionMismatch) as info:
                await ac.put("k", "b", 0)
            assert not isinstance(info.value, Maybe)

    asyncio.run(scenario())
    assert server.kv.puts_received == 1


def test_a_put_whose_reply_was_lost_is_maybe_and_did_apply(server: FakeServer) -> None:
    """Written, then no answer: the resend's VersionMismatch is Maybe (here it had applied)."""
    seed(server, "k", "a", 1)
    server.run(lambda: setattr(server.kv, "swallow_puts", 1))
    with Client([server.address], call_timeout_s=0.2) as c, pytest.raises(Maybe):
        c.put("k", "b", 1)
    assert stored(server, "k") == ("b", 2)
    assert server.kv.puts_received == 2


# ------------------------------------------------------------------ close() ends calls


@pytest.mark.parametrize("cluster", ["refusing", "silent"])
def test_close_from_another_thread_ends_blocked_calls_with_client_closed(
    cluster: str, server: FakeServer
) -> None:
    """Threads blocked in get with deadline=None end with ClientClosed within 1 s of close()."""
    if cluster == "refusing":
        servers = [dead_address(), dead_address(), dead_address()]
    else:
        server.run(lambda: setattr(server.kv, "silent", True))
        servers = [server.address]
    c = Client(servers, deadline=None, call_timeout_s=0.3)
    ended: dict[int, tuple[BaseException | None, float]] = {}

    def blocked(i: int) -> None:
        try:
            c.get(f"k{i}")
            ended[i] = (None, time.monotonic())
        except BaseException as exc:
            ended[i] = (exc, time.monotonic())

    threads = [threading.Thread(target=blocked, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(c._async._calls) == 4, timeout_s=5, message="4 calls in flight")
    time.sleep(0.3)  # let them go round their retry loops (and backoffs) a while
    closed_at = time.monotonic()
    c.close()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    for exc, at in ended.values():
        assert isinstance(exc, ClientClosed), exc
        assert at - closed_at < CLOSE_BOUND_S
    with pytest.raises(ClientClosed):
        c.get("later")
    with pytest.raises(RuntimeError):  # what a closed client raised before: still caught
        c.put("later", "v", 0)
    c.close()  # idempotent


def test_async_close_ends_every_task_in_flight_with_client_closed() -> None:
    async def scenario() -> None:
        ac = AsyncClient([dead_address(), dead_address()], deadline=None, call_timeout_s=0.3)
        tasks = [asyncio.ensure_future(ac.get(f"k{i}")) for i in range(4)]
        tasks.append(asyncio.ensure_future(ac.put("p", "v", 0)))
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in tasks)
        start = time.monotonic()
        await ac.close()
        results = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), CLOSE_BOUND_S
        )
        assert time.monotonic() - start < CLOSE_BOUND_S
        assert all(isinstance(r, ClientClosed) for r in results), results
        with pytest.raises(ClientClosed):
            await ac.get("later")
        await ac.close()  # idempotent

    asyncio.run(scenario())


def test_leaving_async_with_ends_the_calls_of_other_tasks() -> None:
    async def scenario() -> None:
        async with AsyncClient([dead_address()], call_timeout_s=0.3) as ac:
            task = asyncio.ensure_future(ac.get("k"))
            await asyncio.sleep(0.1)
        with pytest.raises(ClientClosed):
            await asyncio.wait_for(task, CLOSE_BOUND_S)

    asyncio.run(scenario())


def test_a_callers_own_cancellation_stays_a_cancellation() -> None:
    """close() turns only the cancellations it made into ClientClosed."""

    async def scenario() -> None:
        async with AsyncClient([dead_address()], call_timeout_s=0.3) as ac:
            task = asyncio.ensure_future(ac.get("k"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await ac.get("k")
            assert not ac._calls

    asyncio.run(scenario())


# ------------------------------------------------------------ the lock's holder is owned


def test_acquire_whose_put_is_maybe_holds_the_lock_and_release_frees_it(
    server: FakeServer,
) -> None:
    server.run(lambda: setattr(server.kv, "swallow_puts", 1))
    with Client([server.address], call_timeout_s=0.2) as c:
        lock = Lock(c, "job")
        token = lock.acquire(timeout=10)
        assert stored(server, lock.key) == (lock.holder_id, token)
        lock.release()
        assert stored(server, lock.key) == (FREE, token + 1)


def test_acquire_that_gives_up_with_its_put_applied_says_the_lock_may_be_held(
    server: FakeServer,
) -> None:
    """The put applied, then the cluster went silent: LockStateUnknown; release() frees it."""
    server.run(lambda: setattr(server.kv, "silence_after_put", True))
    with Client([server.address], deadline=1.0, call_timeout_s=0.2) as c:
        lock = Lock(c, "job")
        with pytest.raises(LockStateUnknown) as info:
            lock.acquire(timeout=10)
        error = info.value
        assert error.holder_id == lock.holder_id and error.key == lock.key
        assert lock.holder_id in str(error) and "release()" in str(error)
        assert stored(server, lock.key) == (lock.holder_id, 1)  # it did apply
        server.run(lambda: setattr(server.kv, "silent", False))
        lock.release()
        assert stored(server, lock.key) == (FREE, 2)
        with pytest.raises(LockNotHeld):
            lock.release()  # settled: back to the ordinary contract


def test_release_after_an_unknown_acquire_stops_a_delayed_put_from_applying(
    server: FakeServer,
) -> None:
    """The put was still in transit: release() moves the key on, so it can never apply."""
    server.run(lambda: setattr(server.kv, "hold_puts", True))
    with Client([server.address], deadline=1.0, call_timeout_s=0.3) as c:
        lock = Lock(c, "job")
        server.run(lambda: setattr(server.kv, "silent", False))

        def silence_gets_once_put_held() -> bool:
            if server.kv.held:
                server.kv.silent = True
                return True
            return False

        watcher = threading.Thread(
            target=lambda: wait_until(
                lambda: server.run(silence_gets_once_put_held), timeout_s=5, message="a held put"
            )
        )
        watcher.start()
        with pytest.raises(LockStateUnknown):
            lock.acquire(timeout=10)
        watcher.join(5)
        server.run(lambda: setattr(server.kv, "silent", False))
        server.run(lambda: setattr(server.kv, "hold_puts", False))
        lock.release()  # not held: settles quietly by moving the key past version 0
        assert stored(server, lock.key) == (FREE, 1)
        server.run(server.kv.release_held)  # the delayed copies arrive now
        wait_until(
            lambda: len(server.kv.held_results) == server.kv.puts_received - 1,
            timeout_s=5,
            message="held puts to apply",
        )
        assert stored(server, lock.key) == (FREE, 1)  # none of them took the lock


def test_acquire_ended_by_close_can_be_released_from_a_new_client(server: FakeServer) -> None:
    """ClientClosed mid-put: LockStateUnknown; Lock.recover on a new client releases it."""
    server.run(lambda: setattr(server.kv, "silence_after_put", True))
    c = Client([server.address], deadline=None, call_timeout_s=0.2)
    lock = Lock(c, "job")
    errors: list[BaseException] = []

    def acquire() -> None:
        try:
            lock.acquire()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=acquire)
    thread.start()
    wait_until(lambda: server.kv.puts_received >= 1, timeout_s=5, message="the put")
    c.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], LockStateUnknown), errors
    assert isinstance(errors[0].__cause__, ClientClosed)
    server.run(lambda: setattr(server.kv, "silent", False))
    with Client([server.address], call_timeout_s=0.5) as c2:
        Lock.recover(c2, errors[0]).release()
    assert stored(server, lock.key) == (FREE, 2)
