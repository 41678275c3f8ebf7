"""Helpers for the RPC tests: run a coroutine, wait on a condition, a scriptable handler.

No pytest-asyncio: each test is a plain function that calls :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from kvraft.errors import NoKey, ProtocolError
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import check, client_sender
from kvraft.rpc.server import RpcServer
from kvraft.rpc.wire_errors import UnknownMethod

T = TypeVar("T")

HOST = "127.0.0.1"


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new-loop factory for ``"asyncio"`` or ``"uvloop"`` (no global policy change)."""
    if kind == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    assert kind == "asyncio", kind
    return asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0, loop: str = "asyncio") -> T:
    """Run ``coro`` on a fresh event loop; fail the test if it takes over ``timeout_s``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coro

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(bounded())


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` each loop tick (plus 1 ms) until true; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.001)


class ScriptedHandler:
    """A handler whose methods tests can script.

    - ``echo(x)`` -> x; ``add((a, b))`` -> a + b (checked ints);
    - ``hang`` never answers (until cancelled); ``gate`` waits for :attr:`gate`;
    - ``boom`` raises RuntimeError; ``nokey`` raises NoKey;
    - ``held(x)`` parks until :meth:`release` is called for it, so tests choose
      the order of replies;
    - ``big(n)`` -> ``b"x" * n``;
    - notifications are recorded in :attr:`notes`; ``notify_boom`` raises.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.notes: list[tuple[str, str, Any]] = []
        # The peer_id the server gave each notify, in order (the proven identity).
        self.note_peers: list[int | None] = []
        self.held: dict[Any, asyncio.Future[Any]] = {}
        self.hanging = 0
        self.gate = asyncio.Event()
        self.extra: dict[str, Callable[[Any], Awaitable[Any]]] = {}

    async def handle_call(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> Any:
        self.calls += 1
        if method in self.extra:
            return await self.extra[method](args)
        if method == "echo":
            return args
        if method == "add":
            check(args, tuple[int, int], "add args")
            return args[0] + args[1]
        if method == "sender":
            return sender
        if method == "peer_id":
            return peer_id
        if method == "hang":
            self.hanging += 1
            await asyncio.Event().wait()
        if method == "gate":
            await self.gate.wait()
            return args
        if method == "boom":
            raise RuntimeError("handler exploded")
        if method == "nokey":
            raise NoKey(f"no key {args!r}")
        if method == "held":
            fut = asyncio.get_running_loop().create_future()
            self.held[args] = fut
            return await fut
        if method == "big":
            return b"x" * args
        if method == "unencodable":
            return object()
        raise UnknownMethod(method)

    def release(self, key: Any) -> None:
        self.held.pop(key).set_result(key)

    def handle_notify(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> None:
        if method == "notify_boom":
            raise RuntimeError("notify handler exploded")
        if method == "notify_strict":
            check(args, int, "notify_strict args")
        if method == "notify_bad":
            raise ProtocolError("bad notify args")
        self.notes.append((method, sender, args))
        self.note_peers.append(peer_id)


@contextlib.asynccontextmanager
async def serving(
    handler: ScriptedHandler | None = None, **kwargs: Any
) -> AsyncIterator[tuple[RpcServer, ScriptedHandler]]:
    """A started RpcServer on a free loopback port; closed on exit."""
    handler = handler or ScriptedHandler()
    server = RpcServer(handler, name="test", **kwargs)
    await server.start(HOST, 0)
    try:
        yield server, handler
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def client_of(address: str, name: str = "t", **kwargs: Any) -> AsyncIterator[RpcClient]:
    """An RpcClient for ``address``; closed on exit."""
    client = RpcClient(address, client_sender(name), **kwargs)
    try:
        yield client
    finally:
        client.close()


async def free_dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, HOST, 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (reset counts as closed)."""
    data = b""
    async with asyncio.timeout(timeout_s):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data
