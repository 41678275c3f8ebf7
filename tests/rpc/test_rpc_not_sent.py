"""RpcClient tells "never sent" (NotSent) from "sent, outcome unknown", on live sockets.

The client's ``Maybe`` rests on this: only an attempt whose request was
handed to a connection may have run on the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from rpc_support import HOST, client_of, free_dead_port, run, serving, wait_until

from kvraft.errors import (
    CallTimeout,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    NotSent,
    RpcError,
)


class NeverConnects:
    """Replaces loop.create_connection with one that never finishes (a black-holed SYN)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.create_connection = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()


def test_not_sent_errors_are_connection_errors_and_timeouts_stay_timeouts() -> None:
    """Existing ``except ConnectionLost`` / ``except CallTimeout`` still catch the new classes."""
    assert issubclass(NotSent, ConnectionLost) and issubclass(NotSent, RpcError)
    assert issubclass(ConnectFailed, NotSent)
    assert issubclass(ConnectTimeout, NotSent) and issubclass(ConnectTimeout, CallTimeout)
    assert not issubclass(CallTimeout, NotSent)


def test_a_refused_connection_is_not_sent(loop_kind: str) -> None:
    async def scenario() -> None:
        port = await free_dead_port()
        async with client_of(f"{HOST}:{port}") as client:
            with pytest.raises(ConnectFailed, match="cannot connect"):
                await client.call("echo", 1, timeout=5)

    run(scenario(), loop=loop_kind)


def test_a_connect_timeout_is_not_sent() -> None:
    async def scenario() -> None:
        async with serving() as (server, handler):
            NeverConnects(asyncio.get_running_loop())
            async with client_of(server.address, connect_timeout_s=0.1) as client:
                with pytest.raises(ConnectFailed, match="timed out"):
                    await client.call("echo", 1, timeout=5)
            assert handler.calls == 0

    run(scenario())


def test_a_call_timeout_while_still_connecting_is_not_sent() -> None:
    async def scenario() -> None:
        async with serving() as (server, handler):
            NeverConnects(asyncio.get_running_loop())
            async with client_of(server.address, connect_timeout_s=5) as client:
                with pytest.raises(ConnectTimeout, match="no connection in time"):
                    await client.call("echo", 1, timeout=0.1)
            assert handler.calls == 0

    run(scenario())


def test_a_closed_client_does_not_send() -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            assert await client.call("echo", 1, timeout=5) == 1
            client.close()
            with pytest.raises(NotSent, match="closed"):
                await client.call("echo", 2, timeout=5)
            assert handler.calls == 1

    run(scenario())


def test_close_while_connecting_is_not_sent() -> None:
    async def scenario() -> None:
        async with serving() as (server, _):
            NeverConnects(asyncio.get_running_loop())
            async with client_of(server.address) as client:
                call = asyncio.ensure_future(client.call("echo", 1, timeout=5))
                await wait_until(lambda: client._connecting is not None)
                client.close()
                with pytest.raises(NotSent):
                    await call

    run(scenario())


def test_a_timeout_after_the_request_was_written_is_unknown(loop_kind: str) -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            with pytest.raises(CallTimeout) as info:
                await client.call("hang", None, timeout=0.2)
            assert not isinstance(info.value, NotSent)
            assert handler.hanging == 1

    run(scenario(), loop=loop_kind)


def test_a_connection_lost_after_the_request_was_written_is_unknown(loop_kind: str) -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            call = asyncio.ensure_future(client.call("hang", None, timeout=5))
            await wait_until(lambda: handler.hanging == 1)
            for conn in list(server.connections):
                conn.refuse("test drops the connection")
            with pytest.raises(ConnectionLost) as info:
                await call
            assert not isinstance(info.value, NotSent)

    run(scenario(), loop=loop_kind)
