"""When a client gives up, its Unavailable says why: a server that refused the
connection (a TLS handshake failed, a plaintext client at a TLS port) is named
even when later attempts only timed out, as they do on a slow machine."""

from __future__ import annotations

import asyncio

import pytest

from kvraft import AsyncClient, Unavailable


async def _give_up_reason() -> str:
    silent_peers: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_peers.append(writer)  # accepts, never answers: every call times out

    async def closing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # closes before any answer, as a TLS port does to plaintext

    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    refusing = await asyncio.start_server(closing, "127.0.0.1", 0)
    servers = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in (refusing, quiet, quiet)]
    try:
        async with AsyncClient(servers, deadline=1.5, call_timeout_s=0.3) as client:
            with pytest.raises(Unavailable) as raised:
                await client.get("k")
        return str(raised.value)
    finally:
        for writer in silent_peers:
            writer.close()
        quiet.close()
        refusing.close()


def test_a_refusal_is_named_though_later_attempts_timed_out() -> None:
    reason = asyncio.run(_give_up_reason())
    # The last attempt went to a silent server (two of the three are), so without
    # the refusal kept aside the message would speak of a timeout only.
    assert "closed by the server before any answer" in reason, reason
    assert "(a TLS server? connect with ssl=" in reason
