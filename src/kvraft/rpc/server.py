"""The RPC server: accepts connections and dispatches their frames to a :class:`Handler`.

An asyncio Protocol (callbacks, not streams), because every Raft message and
every client operation crosses here; framing and codec stay sans-I/O.

- Many requests share one connection, each served by a task of its own;
  replies go back in the order they are ready, matched by request id.
- Bad input from the network is the remote side's fault: an oversize or
  undecodable frame closes that one connection with one log line; a request
  with an unknown method, bad arguments, or a handler that raises gets an
  error reply. Nobody else notices.
- A reply over the frame maximum is not sent: its caller gets
  ``reply_too_large`` instead, and the connection stays.
- Memory stays bounded when a client stops reading: the server stops reading
  requests from a connection while its replies back up or while
  :data:`MAX_IN_FLIGHT` handlers run for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from kvraft.errors import KVError, ProtocolError, RemoteError
from kvraft.rpc.coalescer import Coalescer, as_stream
from kvraft.rpc.codec import Notify, Reply, Request, decode_envelope, encode_envelope
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, frame
from kvraft.rpc.wire_errors import UnknownMethod, error_of

log = logging.getLogger(__name__)

# Requests a server runs at once for one connection before it stops reading it.
MAX_IN_FLIGHT = 4096
# How long RpcServer.close() waits for cancelled handlers to finish.
CLOSE_GRACE_S = 1.0


class Handler(Protocol):
    """What an :class:`RpcServer` dispatches to."""

    async def handle_call(self, method: str, sender: str, args: Any) -> Any:
        """Serve a request; the return value is the reply's result.

        Raise a service error (``kvraft.errors.WIRE_ERRORS``) to have the caller
        see it as itself, :class:`UnknownMethod` for a method not served, and
        ProtocolError for bad arguments; anything else answers ``internal``.
        """

    def handle_notify(self, method: str, sender: str, args: Any) -> None:
        """Take a one-way message; must not block.

        ProtocolError (bad arguments) closes the sender's connection; any other
        exception is logged and the connection kept.
        """


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.out: Coalescer | None = None
        self.peer = "?"
        self.tasks: set[asyncio.Task[None]] = set()
        self._write_paused = False
        self._read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = as_stream(transport)
        self.out = Coalescer(self.transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Handlers still running finish; their replies are dropped.
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            for body in self.decoder.feed(data):
                env = decode_envelope(body)
                if isinstance(env, Request):
                    self._start(env)
                elif isinstance(env, Notify):
                    self._notify(env)
                else:
                    raise ProtocolError("a client sent a reply frame")
        except ProtocolError as exc:
            self.refuse(f"{exc}")

    def refuse(self, reason: str) -> None:
        """Drop this connection because the remote side broke the protocol."""
        log.warning("%s: closing connection from %s: %s", self.server.name, self.peer, reason)
        if self.transport is not None:
            self.transport.abort()

    def _notify(self, env: Notify) -> None:
        try:
            self.server.handler.handle_notify(env.method, env.sender, env.args)
        except ProtocolError:
            raise
        except Exception:
            log.exception("%s: notify handler for %r raised", self.server.name, env.method)

    def _start(self, req: Request) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(req))
        self.tasks.add(task)
        task.add_done_callback(self._done)
        if len(self.tasks) >= MAX_IN_FLIGHT:
            self._update_reading()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self._read_paused:
            self._update_reading()

    async def _serve(self, req: Request) -> None:
        try:
            result = await self.server.handler.handle_call(req.method, req.sender, req.args)
            reply = Reply(req.request_id, None, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, KVError | UnknownMethod | ProtocolError | RemoteError):
                log.exception("%s: handler for %r raised", self.server.name, req.method)
            reply = Reply(req.request_id, error_of(exc), None)
        self._reply(reply, req.method)

    def _reply(self, reply: Reply, method: str) -> None:
        transport, out = self.transport, self.out
        if transport is None or out is None or transport.is_closing():
            return
        try:
            body = encode_envelope(reply)
        except Exception as exc:  # the handler returned something the wire cannot carry
            log.error("%s: cannot encode reply to %r: %s", self.server.name, method, exc)
            error = ("internal", f"cannot encode the reply: {type(exc).__name__}: {exc}")
            body = encode_envelope(Reply(reply.request_id, error, None))
        if len(body) > self.server.max_frame_bytes:
            message = (
                f"reply to {method!r} of {len(body)} bytes exceeds the maximum of "
                f"{self.server.max_frame_bytes}"
            )
            log.error("%s: %s", self.server.name, message)
            body = encode_envelope(Reply(reply.request_id, ("reply_too_large", message), None))
        out.write(frame(body))

    # Flow control: stop reading requests while replies back up (the client
    # is not reading) or too many handlers run for this connection.

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pause = self._write_paused or len(self.tasks) >= MAX_IN_FLIGHT
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()


class RpcServer:
    """Listens on TCP and dispatches frames to a :class:`Handler`."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        name: str = "rpc",
    ) -> None:
        self.handler = handler
        self.max_frame_bytes = max_frame_bytes
        self.name = name
        self.connections: set[_ServerConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one); OSError if taken."""
        assert self._server is None, "server already started"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self), host, port, reuse_address=True
        )

    @property
    def address(self) -> str:
        """The ``host:port`` actually listened on."""
        assert self._server is not None, "server not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def close(self) -> None:
        """Stop listening, drop every connection and cancel running handlers."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks: list[asyncio.Task[None]] = []
        for conn in list(self.connections):
            tasks.extend(conn.tasks)
            for task in conn.tasks:
                task.cancel()
            if conn.transport is not None:
                conn.transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)
        if server is not None:
            await server.wait_closed()
