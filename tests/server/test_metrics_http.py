"""The metrics port's HTTP responder: its answers, and each bound at the bound and one past."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from kvraft.server.health import Health
from kvraft.server.metrics_http import MAX_REQUEST_HEAD_BYTES, MetricsHttpServer

HEALTHY = Health(True)


@asynccontextmanager
async def serving(*, health: Health = HEALTHY, **bounds: Any) -> AsyncIterator[MetricsHttpServer]:
    server = MetricsHttpServer(
        lambda: b"kvraft_up 1\n", lambda: health, content_type="text/plain", **bounds
    )
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


async def exchange(address: str, request: bytes, timeout_s: float = 10.0) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def get(path: str, padding: int = 0) -> bytes:
    """A GET of ``path`` whose head, through its blank line, is 4 + ... bytes (see head_of)."""
    return f"GET {path} HTTP/1.1\r\nX-Pad: {'a' * padding}\r\n\r\n".encode()


def head_of_size(size: int) -> bytes:
    """A GET /metrics request whose head, blank line included, is exactly ``size`` bytes."""
    base = len(get("/metrics"))
    assert size >= base
    return get("/metrics", size - base)


def test_answers_by_path_and_method() -> None:
    async def scenario() -> list[bytes]:
        async with serving() as server:
            a = server.address
            return [
                await exchange(a, get("/metrics")),
                await exchange(a, get("/health")),
                await exchange(a, get("/nowhere")),
                await exchange(a, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
                await exchange(a, b"nonsense\r\n\r\n"),
            ]

    metrics, health, missing, post, garbage = asyncio.run(scenario())
    assert status_of(metrics) == 200 and metrics.endswith(b"\r\n\r\nkvraft_up 1\n")
    assert b"Content-Length: 12\r\n" in metrics and b"Connection: close\r\n" in metrics
    assert status_of(health) == 200 and health.endswith(b'{"health": "true"}\n')
    assert status_of(missing) == 404
    assert status_of(post) == 405 and b"Allow: GET\r\n" in post
    assert status_of(garbage) == 400


def test_an_unhealthy_node_answers_503_with_the_reason() -> None:
    async def scenario() -> bytes:
        async with serving(health=Health(False, "no leader")) as server:
            return await exchange(server.address, get("/health"))

    response = asyncio.run(scenario())
    assert status_of(response) == 503
    assert response.endswith(b'{"health": "false", "reason": "no leader"}\n')


@pytest.mark.parametrize("max_head", [256, MAX_REQUEST_HEAD_BYTES])
def test_a_head_at_the_bound_is_answered_and_one_byte_past_it_is_431(max_head: int) -> None:
    async def scenario() -> tuple[bytes, bytes, bytes]:
        async with serving(max_head_bytes=max_head) as server:
            a = server.address
            at = await exchange(a, head_of_size(max_head))
            past = await exchange(a, head_of_size(max_head + 1))
            # No blank line at all, far past the bound: refused once the bound is read.
            endless = await exchange(a, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (4 * max_head))
            return at, past, endless

    at, past, endless = asyncio.run(scenario())
    assert status_of(at) == 200
    assert status_of(past) == 431
    assert status_of(endless) == 431


def test_a_head_not_complete_within_the_timeout_gets_408_and_a_prompt_one_an_answer() -> None:
    async def scenario() -> tuple[bytes, bytes, float]:
        async with serving(timeout_s=0.5) as server:
            a = server.address
            prompt = await exchange(a, get("/metrics"))
            loop = asyncio.get_running_loop()
            began = loop.time()
            slow = await exchange(a, b"GET /metrics HTTP/1.1\r\n")  # never finishes its head
            return prompt, slow, loop.time() - began

    prompt, slow, took_s = asyncio.run(scenario())
    assert status_of(prompt) == 200
    assert status_of(slow) == 408
    assert 0.4 < took_s < 8.0


def test_connections_at_the_bound_are_served_and_one_more_is_closed_at_once() -> None:
    async def scenario() -> tuple[bytes, list[bytes], int]:
        async with serving(max_connections=3) as server:
            host, port = server.address.rsplit(":", 1)
            held = [await asyncio.open_connection(host, int(port)) for _ in range(3)]

            async def open_count() -> bool:
                return len(server._handlers) == 3

            async with asyncio.timeout(10):
                while not await open_count():
                    await asyncio.sleep(0.01)
            try:  # one past the bound: closed unanswered (EOF or a reset)
                extra = await exchange(server.address, get("/metrics"))
            except ConnectionResetError:
                extra = b""
            answers = []
            for reader, writer in held:  # the ones at the bound are still served
                writer.write(get("/health"))
                answers.append(await asyncio.wait_for(reader.read(), 10))
                writer.close()
            return extra, answers, server.refused_connections

    extra, answers, refused = asyncio.run(scenario())
    assert extra == b""
    assert refused == 1
    assert [status_of(a) for a in answers] == [200, 200, 200]


def test_a_large_page_reaches_a_client_that_half_closes_after_its_request() -> None:
    """The answer is flushed before the connection closes, even when the client
    sent its EOF at once (as ``nc -N`` does) and the page is larger than the
    socket buffers."""
    page = b"kvraft_x 1\n" * 400_000  # 4.4 MB

    async def scenario() -> bytes:
        server = MetricsHttpServer(lambda: page, lambda: HEALTHY, content_type="text/plain")
        await server.start("127.0.0.1", 0)
        try:
            host, port = server.address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(get("/metrics"))
            writer.write_eof()
            await asyncio.sleep(0.2)  # let the server meet the EOF before we read
            response = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return response
        finally:
            await server.close()

    response = asyncio.run(scenario())
    assert status_of(response) == 200
    assert response.endswith(b"\r\n\r\n" + page)
