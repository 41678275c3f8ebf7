"""Admission control: the connection cap, idle and slow-frame timeouts, handlers cancelled.

Each bound is tested at the bound (served) and one past it (refused or closed),
on a real RpcServer with small limits so the tests take a second, not minutes.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from rpc_support import client_of, read_until_closed, run, serving, wait_until

from kvraft.rpc.admission import REFUSALS_PER_LOG_LINE, ConnectionLimits
from kvraft.rpc.codec import Request, encode_envelope
from kvraft.rpc.framing import frame


async def open_raw(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def echo_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rid: int) -> bool:
    """Whether an echo request on this raw connection is answered (False: it was closed)."""
    writer.write(frame(encode_envelope(Request(rid, "echo", "craw", rid))))
    try:
        async with asyncio.timeout(2.0):
            header = await reader.readexactly(4)
            await reader.readexactly(int.from_bytes(header, "big"))
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return False
    return True


def test_connections_up_to_the_cap_are_served_and_one_more_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kvraft.rpc")
    cap = 5

    async def scenario() -> None:
        limits = ConnectionLimits(max_connections=cap)
        async with serving(limits=limits) as (server, _):
            conns = [await open_raw(server.address) for _ in range(cap)]
            for i, (reader, writer) in enumerate(conns):
                assert await echo_on(reader, writer, i), f"connection {i + 1} of {cap}"
            reader, writer = await open_raw(server.address)  # one past the cap
            assert await read_until_closed(reader) == b""
            assert not await echo_on(reader, writer, 99)
            writer.close()
            assert server.refused_connections == 1 and len(server.connections) == cap
            # A slot freed is a slot taken again.
            conns[0][1].close()
            await wait_until(lambda: len(server.connections) == cap - 1, what="slot freed")
            again = await open_raw(server.address)
            assert await echo_on(*again, 100)
            for _, w in [*conns[1:], again]:
                w.close()

    run(scenario())
    assert sum("refused a connection" in r.getMessage() for r in caplog.records) == 1


def test_refusals_over_the_cap_are_logged_once_per_hundred(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kvraft.rpc")
    past = REFUSALS_PER_LOG_LINE + 1

    async def scenario() -> None:
        async with serving(limits=ConnectionLimits(max_connections=1)) as (server, _):
            held = await open_raw(server.address)
            assert await echo_on(*held, 1)
            for _ in range(past):
                reader, writer = await open_raw(server.address)
                await read_until_closed(reader)
                writer.close()
            assert server.refused_connections == past
            held[1].close()

    run(scenario(), timeout_s=60)
    lines = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(lines) == 2 and f"{past} refused so far" in lines[1]


def test_an_idle_connection_is_closed_after_the_idle_timeout_and_not_before() -> None:
    idle_s = 0.4

    async def scenario() -> None:
        limits = ConnectionLimits(idle_timeout_s=idle_s)
        async with serving(limits=limits) as (server, _):
            # Busy: a frame every idle_s / 4 keeps a connection for 3 idle periods.
            busy = await open_raw(server.address)
            quiet = await open_raw(server.address)
            started = time.monotonic()

            async def closed_after() -> float:
                assert await read_until_closed(quiet[0]) == b""
                return time.monotonic() - started

            quiet_closed = asyncio.ensure_future(closed_after())
            for i in range(12):
                assert await echo_on(*busy, i), f"busy connection closed after {i} echoes"
                await asyncio.sleep(idle_s / 4)
            # Quiet: closed at the bound, not before it (nor long after).
            assert quiet_closed.done()
            assert idle_s - 0.05 <= quiet_closed.result() < idle_s + 0.5, quiet_closed.result()
            assert await echo_on(*busy, 99)
            busy[1].close()
            quiet[1].close()

    run(scenario())


def test_a_running_handler_keeps_its_connection_from_idling_out() -> None:
    async def scenario() -> None:
        limits = ConnectionLimits(idle_timeout_s=0.2)
        async with serving(limits=limits) as (server, handler):
            handler.extra["nap"] = lambda s: asyncio.sleep(s, result=s)
            async with client_of(server.address) as client:
                assert await client.call("nap", 0.6, timeout=5) == 0.6

    run(scenario())


def test_a_frame_completed_within_the_frame_timeout_is_served_and_a_slower_one_closes() -> None:
    frame_s = 0.5

    async def scenario() -> None:
        limits = ConnectionLimits(frame_timeout_s=frame_s)
        async with serving(limits=limits) as (server, handler):
            data = frame(encode_envelope(Request(1, "echo", "cslow", "x" * 100)))
            # Within the bound: dribbled over about half of it, then served.
            reader, writer = await open_raw(server.address)
            for i in range(0, len(data), 20):
                writer.write(data[i : i + 20])
                await asyncio.sleep(frame_s / 2 / (len(data) // 20 + 1))
            header = await reader.readexactly(4)
            await reader.readexactly(int.from_bytes(header, "big"))
            writer.close()
            # Past it: a slow header (two of its four bytes) and a slow body.
            for partial in (data[:2], data[:30]):
                reader, writer = await open_raw(server.address)
                writer.write(partial)
                started = time.monotonic()
                assert await read_until_closed(reader) == b""
                waited = time.monotonic() - started
                assert frame_s - 0.05 <= waited < frame_s + 2.0, waited
                writer.close()
            assert handler.calls == 1

    run(scenario())


def test_a_connections_handlers_are_cancelled_when_it_goes() -> None:
    async def scenario() -> None:
        async with serving() as (server, handler):
            cancelled = asyncio.Event()

            async def wait_forever(_: object) -> None:
                try:
                    await asyncio.Event().wait()
                finally:
                    cancelled.set()

            handler.extra["forever"] = wait_forever
            async with client_of(server.address) as client:
                call = asyncio.ensure_future(client.call("forever", None, timeout=30))
                await wait_until(lambda: handler.calls == 1, what="the call started")
                client.close()
                with pytest.raises(Exception, match=r"closed|lost"):
                    await call
            async with asyncio.timeout(5):
                await cancelled.wait()
            await wait_until(
                lambda: all(not c.tasks for c in server.connections), what="no tasks left"
            )

    run(scenario())


def test_limits_below_their_minimum_are_refused() -> None:
    for bad in (
        {"max_connections": 0},
        {"idle_timeout_s": 0.0},
        {"frame_timeout_s": -1.0},
    ):
        with pytest.raises(ValueError):
            ConnectionLimits(**bad)  # type: ignore[arg-type]
    assert ConnectionLimits(max_connections=1).max_connections == 1
