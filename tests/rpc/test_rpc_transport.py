"""RpcServer / RpcClient on live loopback sockets: pipelining, timeouts, losses, errors."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from typing import Any

import pytest
from rpc_support import (
    HOST,
    ScriptedHandler,
    client_of,
    free_dead_port,
    run,
    serving,
    wait_until,
)

from kvraft.addresses import split_address
from kvraft.errors import (
    WIRE_ERRORS,
    CallTimeout,
    ConnectionLost,
    NoKey,
    RemoteError,
)
from kvraft.rpc import client as client_module
from kvraft.rpc import server as server_module
from kvraft.rpc.client import RpcClient
from kvraft.rpc.coalescer import Coalescer
from kvraft.rpc.codec import client_sender, peer_sender
from kvraft.rpc.peer_auth import Membership, PeerKey

# ------------------------------------------------------------------ pipelining


@pytest.mark.parametrize("order", ["reverse", "random"])
def test_500_calls_in_flight_on_one_connection_each_get_their_own_reply(
    loop_kind: str, order: str
) -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            calls = [asyncio.ensure_future(client.call("held", i, timeout=10)) for i in range(500)]
            await wait_until(lambda: len(handler.held) == 500, what="500 requests at the server")
            assert len(server.connections) == 1
            keys = list(range(500))
            if order == "reverse":
                keys.reverse()
            else:
                random.Random(7).shuffle(keys)
            for key in keys:
                handler.release(key)
            assert await asyncio.gather(*calls) == list(range(500))

    run(scenario(), loop=loop_kind)


def test_replies_to_concurrent_mixed_calls_match_their_requests(loop_kind: str) -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            pairs = [(i, 1000 - i) for i in range(300)]
            results = await asyncio.gather(*(client.call("add", p, timeout=5) for p in pairs))
            assert results == [1000] * 300
            blobs = [bytes([i]) * i for i in range(256)]
            assert await asyncio.gather(*(client.call("echo", b, 5) for b in blobs)) == blobs

    run(scenario(), loop=loop_kind)


def test_handler_sees_the_sender_identity() -> None:
    key = PeerKey(b"transport-test-secret-0123", "t")
    membership = Membership(key, 0, frozenset({3}))

    async def scenario() -> None:
        async with serving(peer_auth=membership) as (server, _):
            peer = RpcClient(server.address, peer_sender(3), peer_key=key, server_peer_id=0)
            try:
                assert await peer.call("sender", None, timeout=5) == "p3"
            finally:
                peer.close()
            async with client_of(server.address, name="ab12") as client:
                assert await client.call("sender", None, timeout=5) == client_sender("ab12")

    run(scenario())


# -------------------------------------------------------------------- timeouts


def test_call_to_a_handler_that_never_answers_times_out_and_others_proceed(
    loop_kind: str,
) -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            loop = asyncio.get_running_loop()
            start = loop.time()
            hung = asyncio.ensure_future(client.call("hang", None, timeout=0.3))
            others = [client.call("echo", i, timeout=5) for i in range(50)]
            assert await asyncio.gather(*others) == list(range(50))
            with pytest.raises(CallTimeout, match="hang"):
                await hung
            elapsed = loop.time() - start
            assert 0.29 <= elapsed < 1.0, elapsed
            assert handler.hanging == 1
            assert await client.call("echo", "after", timeout=5) == "after"
            assert len(server.connections) == 1  # a timeout does not cost the connection

    run(scenario(), loop=loop_kind)


def test_a_reply_arriving_after_its_timeout_is_ignored() -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            with pytest.raises(CallTimeout):
                await client.call("held", "late", timeout=0.05)
            handler.release("late")  # the reply now arrives for a call nobody waits for
            assert await client.call("echo", 1, timeout=5) == 1
            assert len(server.connections) == 1

    run(scenario())


def test_cancelled_call_leaves_the_connection_usable() -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            task = asyncio.ensure_future(client.call("held", "c", timeout=5))
            await wait_until(lambda: "c" in handler.held)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            handler.release("c")
            assert await client.call("echo", 2, timeout=5) == 2

    run(scenario())


# ------------------------------------------------------- connection loss/reconnect


def test_connection_loss_fails_pending_calls_at_once_and_the_next_call_reconnects(
    loop_kind: str,
) -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            calls = [asyncio.ensure_future(client.call("hang", i, timeout=30)) for i in range(20)]
            await wait_until(lambda: handler.hanging == 20, what="20 hanging calls")
            (conn,) = server.connections
            loop = asyncio.get_running_loop()
            start = loop.time()
            assert conn.transport is not None
            conn.transport.abort()  # the server side drops the connection
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert loop.time() - start < 1.0  # at once, not after the 30 s timeout
            assert all(isinstance(r, ConnectionLost) for r in results), results
            assert await client.call("echo", "again", timeout=5) == "again"
            assert len(server.connections) == 1 and conn not in server.connections

    run(scenario(), loop=loop_kind)


def test_server_restart_on_the_same_port_is_reached_by_the_next_call(loop_kind: str) -> None:
    async def scenario() -> None:
        async with serving() as (server, _):
            address = server.address
            async with client_of(address) as client:
                assert await client.call("echo", 1, timeout=5) == 1
                pending = asyncio.ensure_future(client.call("hang", None, timeout=30))
                await wait_until(lambda: sum(len(c.tasks) for c in server.connections) == 1)
                await server.close()
                with pytest.raises(ConnectionLost):
                    await pending
                start = time.monotonic()
                with pytest.raises(ConnectionLost, match="cannot connect"):
                    await client.call("echo", 2, timeout=5)
                assert time.monotonic() - start < 1.0
                host, port = split_address(address)
                await server.start(host, port)
                assert await client.call("echo", 3, timeout=5) == 3

    run(scenario(), loop=loop_kind)


def test_connect_to_a_dead_port_fails_fast_with_connection_lost(loop_kind: str) -> None:
    async def scenario() -> None:
        port = await free_dead_port()
        async with client_of(f"{HOST}:{port}") as client:
            start = time.monotonic()
            with pytest.raises(ConnectionLost, match="cannot connect"):
                await client.call("echo", 1, timeout=10)
            assert time.monotonic() - start < 1.0
            assert client.notify("raft", 1) is False

    run(scenario(), loop=loop_kind)


def test_concurrent_first_calls_share_one_connection(loop_kind: str) -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            results = await asyncio.gather(*(client.call("echo", i, 5) for i in range(100)))
            assert results == list(range(100))
            assert len(server.connections) == 1

    run(scenario(), loop=loop_kind)


class SlowConnect:
    """Wraps loop.create_connection so a test decides when connecting finishes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, drop_at_once: bool = False) -> None:
        self.original = loop.create_connection
        self.attempts = 0
        self.gate = asyncio.Event()
        self.drop_at_once = drop_at_once
        loop.create_connection = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        await self.gate.wait()
        transport, proto = await self.original(*args, **kwargs)
        if self.drop_at_once:
            transport.abort()
        return transport, proto


def test_a_caller_timing_out_while_connecting_does_not_strand_the_others() -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            slow = SlowConnect(asyncio.get_running_loop())
            impatient = asyncio.ensure_future(client.call("echo", "a", timeout=0.05))
            patient = asyncio.ensure_future(client.call("echo", "b", timeout=5))
            with pytest.raises(CallTimeout, match="no connection in time"):
                await impatient
            slow.gate.set()
            assert await patient == "b"
            assert slow.attempts == 1

    run(scenario())


def test_connect_timeout_fails_the_call_with_connection_lost() -> None:
    async def scenario() -> None:
        async with serving() as (server, _):
            SlowConnect(asyncio.get_running_loop())  # never opens the gate
            async with client_of(server.address, connect_timeout_s=0.2) as client:
                start = time.monotonic()
                with pytest.raises(ConnectionLost, match="timed out"):
                    await client.call("echo", 1, timeout=5)
                assert 0.19 <= time.monotonic() - start < 1.0

    run(scenario())


def test_close_while_connecting_fails_waiting_calls_with_connection_lost() -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            SlowConnect(asyncio.get_running_loop())
            calls = [asyncio.ensure_future(client.call("echo", i, timeout=5)) for i in range(3)]
            await wait_until(lambda: client._connecting is not None)
            client.close()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, ConnectionLost) for r in results), results

    run(scenario())


def test_a_connection_that_drops_as_it_opens_fails_the_call_cleanly() -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            slow = SlowConnect(asyncio.get_running_loop(), drop_at_once=True)
            slow.gate.set()
            with pytest.raises(ConnectionLost):
                await client.call("echo", 1, timeout=5)
            slow.drop_at_once = False
            assert await client.call("echo", 2, timeout=5) == 2

    run(scenario())


def test_close_fails_pending_calls_at_once_and_refuses_later_ones(loop_kind: str) -> None:
    async def scenario() -> None:
        async with serving() as (server, handler):
            client = RpcClient(server.address, client_sender("x"))
            calls = [asyncio.ensure_future(client.call("hang", i, timeout=30)) for i in range(5)]
            await wait_until(lambda: handler.hanging == 5)
            client.close()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, ConnectionLost) for r in results), results
            assert "client closed" in str(results[0])
            with pytest.raises(ConnectionLost, match="closed"):
                await client.call("echo", 1, timeout=5)
            assert client.notify("raft", 1) is False
            client.close()  # idempotent
            await wait_until(lambda: not server.connections, what="server to see the close")

    run(scenario(), loop=loop_kind)


# ------------------------------------------------------------- errors as answers


def test_unknown_method_answers_unknown_method(loop_kind: str) -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            with pytest.raises(RemoteError) as info:
                await client.call("no_such_method", None, timeout=5)
            assert info.value.code == "unknown_method"
            assert await client.call("echo", 1, timeout=5) == 1

    run(scenario(), loop=loop_kind)


def test_a_handler_that_raises_answers_internal_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            for _ in range(3):
                with pytest.raises(RemoteError) as info:
                    await client.call("boom", None, timeout=5)
                assert info.value.code == "internal"
                assert "handler exploded" in info.value.message
            assert await client.call("echo", "still here", timeout=5) == "still here"
            assert len(server.connections) == 1

    run(scenario())
    assert sum("handler for 'boom' raised" in r.getMessage() for r in caplog.records) == 3


def test_bad_arguments_answer_bad_request() -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            with pytest.raises(RemoteError) as info:
                await client.call("add", (1, "two"), timeout=5)
            assert info.value.code == "bad_request"
            assert await client.call("add", (1, 2), timeout=5) == 3

    run(scenario())


@pytest.mark.parametrize("name", sorted(WIRE_ERRORS))
def test_service_errors_arrive_as_themselves(name: str) -> None:
    error_cls = WIRE_ERRORS[name]

    async def raises(args: Any) -> Any:
        raise error_cls(f"{name} for {args!r}")

    async def scenario() -> None:
        handler = ScriptedHandler()
        handler.extra["fail"] = raises
        async with serving(handler) as (server, _), client_of(server.address) as client:
            with pytest.raises(error_cls, match=f"{name} for 'k'") as info:
                await client.call("fail", "k", timeout=5)
            assert type(info.value) is error_cls

    run(scenario())


def test_nokey_from_the_handler_is_nokey_at_the_caller() -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            with pytest.raises(NoKey, match="no key 'k'"):
                await client.call("nokey", "k", timeout=5)

    run(scenario())


def test_a_result_the_wire_cannot_carry_answers_internal() -> None:
    async def scenario() -> None:
        async with serving() as (server, _), client_of(server.address) as client:
            with pytest.raises(RemoteError, match="cannot encode") as info:
                await client.call("unencodable", None, timeout=5)
            assert info.value.code == "internal"
            assert await client.call("echo", 1, timeout=5) == 1

    run(scenario())


def test_args_the_wire_cannot_carry_raise_locally_before_sending() -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            with pytest.raises(TypeError):
                await client.call("echo", object(), timeout=5)
            with pytest.raises(TypeError):
                client.notify("raft", object())
            assert handler.calls == 0 and not server.connections

    run(scenario())


# ----------------------------------------------------------------- huge messages


def test_reply_over_the_servers_maximum_answers_reply_too_large(loop_kind: str) -> None:
    async def scenario() -> None:
        async with (
            serving(max_frame_bytes=10_000) as (server, _),
            client_of(server.address) as client,
        ):
            with pytest.raises(RemoteError) as info:
                await client.call("big", 20_000, timeout=5)
            assert info.value.code == "reply_too_large"
            (conn,) = server.connections
            assert await client.call("big", 100, timeout=5) == b"x" * 100
            assert server.connections == {conn}

    run(scenario(), loop=loop_kind)


def test_reply_over_the_clients_maximum_fails_only_that_call(loop_kind: str) -> None:
    async def scenario() -> None:
        async with (
            serving() as (server, handler),
            client_of(server.address, max_frame_bytes=10_000) as client,
        ):
            other = asyncio.ensure_future(client.call("held", "other", timeout=5))
            await wait_until(lambda: "other" in handler.held)
            start = time.monotonic()
            with pytest.raises(RemoteError, match="exceeds this client's maximum") as info:
                await client.call("big", 3_000_000, timeout=5)
            assert info.value.code == "reply_too_large"
            assert time.monotonic() - start < 2.0
            handler.release("other")
            assert await other == "other"
            assert await client.call("big", 9_000, timeout=5) == b"x" * 9_000
            assert len(server.connections) == 1

    run(scenario(), loop=loop_kind)


def test_request_over_the_clients_maximum_raises_value_error_before_sending() -> None:
    async def scenario() -> None:
        async with (
            serving() as (server, handler),
            client_of(server.address, max_frame_bytes=1000) as client,
        ):
            with pytest.raises(ValueError, match="exceeds the frame maximum"):
                await client.call("echo", b"x" * 2000, timeout=5)
            with pytest.raises(ValueError, match="exceeds the frame maximum"):
                client.notify("raft", b"x" * 2000)
            assert handler.calls == 0

    run(scenario())


def test_request_over_the_servers_maximum_closes_that_connection(
    rpc_log: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with (
            serving(max_frame_bytes=1000) as (server, _),
            client_of(server.address) as client,
        ):
            start = time.monotonic()
            with pytest.raises(ConnectionLost):
                await client.call("echo", b"x" * 5000, timeout=5)
            assert time.monotonic() - start < 1.0
            assert await client.call("echo", b"small", timeout=5) == b"small"

    run(scenario())
    warnings = [r.getMessage() for r in rpc_log.records]
    assert len(warnings) == 1 and "exceeds the maximum of 1000" in warnings[0], warnings


# ---------------------------------------------------------------- notifications


def test_notify_connects_in_the_background_then_delivers_in_order(loop_kind: str) -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            assert client.notify("raft", 0) is False  # not connected yet: dropped
            await wait_until(lambda: client.connected, what="background connect")
            for i in range(1, 101):
                assert client.notify("raft", i) is True
            await wait_until(lambda: len(handler.notes) == 100)
            assert handler.notes == [("raft", "ct", i) for i in range(1, 101)]

    run(scenario(), loop=loop_kind)


def test_a_notify_handler_that_raises_is_logged_and_the_connection_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            assert await client.call("echo", 0, timeout=5) == 0
            (conn,) = server.connections
            assert client.notify("notify_boom", None)
            assert client.notify("raft", 1)
            await wait_until(lambda: handler.notes == [("raft", "ct", 1)])
            assert server.connections == {conn}

    run(scenario())
    assert sum("notify handler for 'notify_boom' raised" in r.getMessage() for r in caplog.records)


def test_a_notify_with_bad_arguments_closes_that_connection(
    rpc_log: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            assert await client.call("echo", 0, timeout=5) == 0
            assert client.notify("notify_strict", "not an int")
            await wait_until(lambda: not client.connected, what="the server to close")
            assert await client.call("echo", 1, timeout=5) == 1
            assert handler.notes == []

    run(scenario())
    warnings = [r.getMessage() for r in rpc_log.records]
    assert len(warnings) == 1 and "notify_strict args: wrong type str" in warnings[0], warnings


def test_notify_drops_messages_when_the_server_stops_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "NOTIFY_BUFFER_LIMIT_BYTES", 256 * 1024)

    async def scenario() -> None:
        connected = asyncio.Event()

        async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.set()
            await asyncio.Event().wait()

        sink = await asyncio.start_server(never_read, HOST, 0)
        port = sink.sockets[0].getsockname()[1]
        try:
            async with client_of(f"{HOST}:{port}") as client:
                client.notify("raft", None)
                await wait_until(lambda: client.connected)
                await connected.wait()
                payload = b"x" * 64 * 1024
                sent = 0
                while client.notify("raft", payload):
                    sent += 1
                    assert sent < 10_000, "notify never dropped"
                    if sent % 16 == 0:
                        await asyncio.sleep(0)  # let the loop flush what the kernel takes
                assert client._conn is not None and client._conn.transport is not None
                buffered = client._conn.transport.get_write_buffer_size()
                assert buffered <= 256 * 1024 + len(payload) + 100
        finally:
            sink.close()

    run(scenario())


# ---------------------------------------------------------------- flow control


def test_server_stops_reading_a_connection_with_too_many_requests_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_module, "MAX_IN_FLIGHT", 10)

    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            calls = [asyncio.ensure_future(client.call("gate", i, timeout=10)) for i in range(30)]
            await wait_until(lambda: handler.calls >= 10, what="10 running handlers")
            (conn,) = server.connections
            assert conn.transport is not None
            assert not conn.transport.is_reading()
            assert handler.calls <= 30
            handler.gate.set()
            assert await asyncio.gather(*calls) == list(range(30))
            assert conn.transport.is_reading()

    run(scenario())


def test_server_stops_reading_a_client_that_does_not_read_its_replies() -> None:
    async def scenario() -> None:
        from kvraft.rpc.codec import Request, encode_envelope
        from kvraft.rpc.framing import FrameDecoder, frame

        async with serving() as (server, handler):
            reader, writer = await asyncio.open_connection(*split_address(server.address))
            count, size = 64, 512 * 1024
            for i in range(count):
                writer.write(frame(encode_envelope(Request(i, "big", "c?", size))))
            await writer.drain()
            await wait_until(lambda: len(server.connections) == 1)
            (conn,) = server.connections
            assert conn.transport is not None
            transport = conn.transport
            await wait_until(lambda: not transport.is_reading(), what="server to pause")
            decoder = FrameDecoder()
            replies: list[bytes] = []
            while len(replies) < count:
                replies += decoder.feed(await reader.read(1 << 20))
            assert len(replies) == count and handler.calls == count
            await wait_until(lambda: conn.transport is not None and conn.transport.is_reading())
            writer.close()

    run(scenario())


# ------------------------------------------------------------------------ misc


def test_install_event_loop_policy_picks_uvloop_when_importable() -> None:
    pytest.importorskip("uvloop")
    code = (
        "import asyncio; from kvraft.rpc.event_loop import install_event_loop_policy as i;"
        "print(i()); print(type(asyncio.new_event_loop()).__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    name, module = out.stdout.split()
    assert name == "uvloop" and module.startswith("uvloop")


class RecordingTransport:
    """Just enough of a transport to watch what a Coalescer writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_of_one_loop_iteration_leave_in_order_first_at_once_rest_joined() -> None:
    async def scenario() -> None:
        fake = RecordingTransport()
        out = Coalescer(fake)  # type: ignore[arg-type]
        out.write(b"a")
        assert fake.writes == [b"a"]  # the first goes at once: no added latency
        out.write(b"b")
        out.write(b"c")
        assert fake.writes == [b"a"] and out.buffered() == 2
        await asyncio.sleep(0)  # the iteration ends
        assert fake.writes == [b"a", b"bc"]
        out.write(b"d")  # a new iteration: at once again
        assert fake.writes == [b"a", b"bc", b"d"]
        await asyncio.sleep(0)
        out.write(b"e")
        out.write(b"f")
        fake.closing = True  # the connection died before the batch left
        await asyncio.sleep(0)
        assert fake.writes == [b"a", b"bc", b"d", b"e"]

    run(scenario())


def test_server_close_cancels_running_handlers_and_fails_their_callers() -> None:
    async def scenario() -> None:
        async with serving() as (server, handler), client_of(server.address) as client:
            calls = [asyncio.ensure_future(client.call("hang", i, timeout=30)) for i in range(3)]
            await wait_until(lambda: handler.hanging == 3)
            tasks = [t for c in server.connections for t in c.tasks]
            await server.close()
            assert all(t.cancelled() for t in tasks)
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, ConnectionLost) for r in results), results

    run(scenario())
