"""Bad input closes only the offending connection, with one log line, and nobody else notices."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rpc_support import (
    client_of,
    loop_factory,
    read_until_closed,
    run,
    serving,
    wait_until,
)

from kvraft.addresses import split_address
from kvraft.errors import ProtocolError, RemoteError
from kvraft.rpc.codec import (
    NOTIFY,
    REPLY,
    REQUEST,
    Reply,
    Request,
    decode_envelope,
    encode_envelope,
)
from kvraft.rpc.framing import HEADER, FrameDecoder, frame

MAX = 64 * 1024


def _raw(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


BAD_INPUTS = {
    "oversize frame": (HEADER.pack(MAX + 1) + b"x" * 100, f"exceeds the maximum of {MAX}"),
    "oversize frame, huge length": (HEADER.pack(0xFFFFFFFF), "exceeds the maximum"),
    "not msgpack": (frame(b"\xc1\xc1\xc1"), "undecodable msgpack"),
    "truncated msgpack": (frame(b"\x95\x00\x01"), "undecodable msgpack"),
    "msgpack, not an array": (frame(_raw({"method": "echo"})), "not a msgpack array"),
    "empty array": (frame(_raw([])), "not a msgpack array"),
    "unknown kind": (frame(_raw([9, 1, "echo", "c1", None])), "malformed envelope of kind 9"),
    "request missing a field": (frame(_raw([0, 1, "echo", "c1"])), "malformed envelope"),
    "request id not an int": (frame(_raw([0, "1", "echo", "c1", None])), "malformed envelope"),
    "method not a str": (frame(_raw([0, 1, 42, "c1", None])), "malformed envelope"),
    "sender not a str": (frame(_raw([0, 1, "echo", None, None])), "malformed envelope"),
    "kind is a bool": (frame(_raw([True, 1, None, None])), "kind True is not an int"),
    "reply sent to a server": (frame(_raw([1, 1, None, "result"])), "sent a reply frame"),
    "unknown ext tag in args": (
        frame(_raw([0, 1, "echo", "c1", msgpack.ExtType(99, b"\x90")])),
        "unknown message type 99",
    ),
    "typed message with a wrong field type": (
        frame(_raw([0, 1, "echo", "c1", msgpack.ExtType(1, _raw(["t", 1, None]))])),
        "Entry.term: wrong type str",
    ),
    "bad frame after a good one": (
        frame(encode_envelope(Request(1, "echo", "c1", "ok"))) + frame(b"\xc1"),
        "undecodable msgpack",
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_closes_only_that_connection_with_one_log_line(
    name: str, loop_kind: str, rpc_log: pytest.LogCaptureFixture
) -> None:
    data, reason = BAD_INPUTS[name]

    async def scenario() -> None:
        async with (
            serving(max_frame_bytes=MAX) as (server, handler),
            client_of(server.address) as good,
        ):
            assert await good.call("echo", "before", timeout=5) == "before"
            in_flight = asyncio.ensure_future(good.call("held", "mid", timeout=5))
            await wait_until(lambda: "mid" in handler.held)

            reader, writer = await asyncio.open_connection(*split_address(server.address))
            writer.write(data)
            await read_until_closed(reader)  # the server hangs up on us
            writer.close()

            handler.release("mid")
            assert await in_flight == "mid"
            assert await good.call("echo", "after", timeout=5) == "after"
            await wait_until(lambda: len(server.connections) == 1)

    run(scenario(), loop=loop_kind)
    lines = [r.getMessage() for r in rpc_log.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert "closing connection from 127.0.0.1:" in lines[0] and reason in lines[0], lines


def test_client_closes_a_connection_whose_server_sends_garbage(
    rpc_log: pytest.LogCaptureFixture,
) -> None:
    """The client side holds to the same rule: a bad frame closes it, pending calls fail."""

    async def scenario() -> None:
        from kvraft.errors import ConnectionLost

        connections = finished = 0

        async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections, finished
            connections += 1
            decoder = FrameDecoder()
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    for body in decoder.feed(chunk):
                        req = decode_envelope(body)
                        assert isinstance(req, Request)
                        if req.method == "garbage":
                            writer.write(frame(_raw([REQUEST, 1, "x", "s", None])))
                        else:
                            writer.write(frame(encode_envelope(Reply(req.request_id, None, 1))))
            writer.close()
            finished += 1

        rogue_server = await asyncio.start_server(rogue, "127.0.0.1", 0)
        port = rogue_server.sockets[0].getsockname()[1]
        try:
            async with client_of(f"127.0.0.1:{port}") as client:
                assert await client.call("ok", None, timeout=5) == 1
                with pytest.raises(ConnectionLost, match="non-reply frame"):
                    await client.call("garbage", None, timeout=5)
                assert await client.call("ok", None, timeout=5) == 1
                assert connections == 2
            await wait_until(lambda: finished == 2, what="rogue handlers to see EOF")
        finally:
            rogue_server.close()
            await rogue_server.wait_closed()

    run(scenario())
    lines = [r.getMessage() for r in rpc_log.records]
    assert len(lines) == 1 and "server sent a non-reply frame" in lines[0], lines


class EchoOnly:
    """A handler safe to fuzz: echoes, refuses every other method."""

    async def handle_call(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> Any:
        if method == "echo":
            return args
        raise RemoteError("unknown_method", method)

    def handle_notify(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> None:
        if method == "strict":
            raise ProtocolError("strict notify refuses everything")


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
envelope_like = st.lists(values, min_size=1, max_size=6).flatmap(
    lambda items: st.sampled_from([0, 1, 2, REQUEST, REPLY, True, -1, 7]).map(
        lambda kind: [kind, *items[1:]]
    )
)
methods = st.sampled_from(["echo", "strict", "nope", ""])
# Requests and notifications with each field either right or of a random type.
near_valid = st.one_of(
    st.builds(
        lambda rid, method, sender, args: [REQUEST, rid, method, sender, args],
        st.integers(0, 2**64 - 1) | values,
        methods | values,
        st.text(max_size=4) | values,
        values,
    ),
    st.builds(
        lambda method, sender, args: [NOTIFY, method, sender, args],
        methods | values,
        st.text(max_size=4) | values,
        values,
    ),
)
frames = st.one_of(
    values.map(lambda v: frame(_raw(v))),
    envelope_like.map(lambda v: frame(_raw(v))),
    near_valid.map(lambda v: frame(_raw(v))),
    st.binary(max_size=64).map(frame),
)
garbage = st.one_of(
    st.binary(max_size=200),
    st.lists(frames, min_size=1, max_size=5).map(b"".join),
    st.tuples(st.lists(frames, max_size=3), st.binary(max_size=20)).map(
        lambda t: b"".join(t[0]) + t[1]
    ),
)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_random_garbage_never_stops_the_server_from_answering(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Random bytes and well-framed junk over fresh connections, then a valid call."""
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    caplog.set_level(logging.WARNING, logger="kvraft.rpc")

    def closings() -> int:
        return sum("closing connection from" in r.getMessage() for r in caplog.records)

    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        server_cm = serving(EchoOnly(), max_frame_bytes=MAX)  # type: ignore[arg-type]
        server, _ = runner.run(server_cm.__aenter__())
        good_cm = client_of(server.address)
        good = runner.run(good_cm.__aenter__())
        examples = refused = 0

        async def throw(data: bytes) -> None:
            nonlocal refused
            before = closings()
            reader, writer = await asyncio.open_connection(*split_address(server.address))
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                writer.write_eof()  # the server closes at EOF if the junk did not close it
            await read_until_closed(reader)
            writer.close()
            assert await good.call("echo", examples, timeout=5) == examples
            assert closings() - before <= 1  # at most one line per bad connection
            refused += closings() - before

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=garbage)
        def throw_one(data: bytes) -> None:
            nonlocal examples
            examples += 1
            runner.run(throw(data))

        try:
            throw_one()
            assert examples >= 100
            assert refused >= examples // 4, (refused, examples)  # the junk was mostly junk
            runner.run(wait_until(lambda: len(server.connections) == 1, what="junk to be gone"))
            assert runner.run(good.call("echo", ("still", "here"), timeout=5)) == ("still", "here")
        finally:
            runner.run(good_cm.__aexit__(None, None, None))
            runner.run(server_cm.__aexit__(None, None, None))
