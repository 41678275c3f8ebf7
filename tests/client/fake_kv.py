"""A one-node versioned KV behind a real RpcServer, whose replies a test can withhold.

For the client's promises that hinge on one attempt's fate (was it sent? did
it apply? was its reply lost?), a real cluster's faults are too coarse: this
stand-in applies each put at once and can swallow its reply, so the test
knows exactly which attempts applied. It runs on its own loop thread, so both
the blocking ``Client`` and an ``AsyncClient`` on another loop can use it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kvraft.kv_protocol import GetOk, GetOp, NoKeyResult, PutOk, PutOp, VersionMismatchResult
from kvraft.loop_thread import EventLoopThread
from kvraft.rpc.codec import check
from kvraft.rpc.server import RpcServer
from kvraft.rpc.wire_errors import UnknownMethod

HOST = "127.0.0.1"


class FakeKV:
    """The versioned-KV contract, one node, with knobs for lost replies and held requests.

    - ``swallow_puts``: that many of the next puts apply but never answer;
    - ``silence_after_put``: the next put applies, then nothing answers
      (until ``silent`` is cleared);
    - ``hold_puts``: puts neither apply nor answer until :meth:`release_held`,
      which applies them then (a request delayed in transit).
    """

    def __init__(self) -> None:
        self.store: dict[str, tuple[str, int]] = {}
        self.swallow_puts = 0
        self.silence_after_put = False
        self.silent = False
        self.hold_puts = False
        self.held: list[asyncio.Future[None]] = []
        self.held_results: list[Any] = []
        self.puts_received = 0
        self.puts_applied = 0

    def release_held(self) -> None:
        """Let every held put apply (in order) and answer."""
        held, self.held = self.held, []
        for fut in held:
            fut.set_result(None)

    async def _hang(self) -> None:
        await asyncio.Event().wait()

    async def handle_call(
        self, method: str, sender: str, args: Any, *, peer_id: int | None = None
    ) -> Any:
        if self.silent:
            await self._hang()
        if method == "put" and self.hold_puts:
            check(args, PutOp, "put")
            self.puts_received += 1
            fut = asyncio.get_running_loop().create_future()
            self.held.append(fut)
            await fut
            result = self._apply(args)
            self.held_results.append(result)
            return result
        if method == "get":
            check(args, GetOp, "get")
            if args.key not in self.store:
                return NoKeyResult()
            value, version = self.store[args.key]
            return GetOk(value=value, version=version)
        if method == "put":
            check(args, PutOp, "put")
            self.puts_received += 1
            result = self._apply(args)
            if self.silence_after_put:
                self.silence_after_put = False
                self.silent = True
                await self._hang()
            if self.swallow_puts > 0:
                self.swallow_puts -= 1
                await self._hang()  # the reply is lost
            return result
        raise UnknownMethod(method)

    def _apply(self, op: PutOp) -> Any:
        current = self.store.get(op.key, ("", 0))[1]
        if op.key not in self.store and op.version > 0:
            return NoKeyResult()
        if op.version != current:
            return VersionMismatchResult(current_version=current)
        self.store[op.key] = (op.value, current + 1)
        self.puts_applied += 1
        return PutOk(version=current + 1)

    def handle_notify(
        self, method: str, sender: str, args: Any, *, peer_id: int | None = None
    ) -> None:
        pass


class FakeServer:
    """A FakeKV served on a free loopback port from a loop thread; ``stop()`` closes it."""

    def __init__(self) -> None:
        self.kv = FakeKV()
        self._thread = EventLoopThread(name="fake-kv")
        self._server = RpcServer(self.kv, name="fake-kv")
        self._thread.run(self._server.start(HOST, 0))
        self.address = self._server.address

    def run(self, fn: Any) -> Any:
        """Call ``fn()`` on the server's loop (to touch the FakeKV safely)."""

        async def call() -> Any:
            return fn()

        return self._thread.run(call())

    def stop(self) -> None:
        """Close the server and end its handlers (those of lost connections too)."""
        if self._thread.running:
            self._thread.run(self._close())
            self._thread.stop()

    async def _close(self) -> None:
        await self._server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def dead_address() -> str:
    """A loopback address that refuses connections (a port bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    return f"{HOST}:{port}"
