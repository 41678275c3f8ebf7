"""RPC over TCP with asyncio: one server class, one client-connection class.

Both are asyncio Protocols (callbacks, not streams) because every Raft message
and every client operation crosses here; the framing and codec stay sans-I/O.

- Many requests share one connection; replies are matched by request id and may
  come back in any order.
- Every call has a timeout. A lost connection fails all its pending calls at
  once with :class:`ConnectionLost`; the next call opens a new connection.
- Bad input from the network is the remote side's fault: an oversize or
  undecodable frame closes that one connection with one log line; a request
  with an unknown method, bad arguments, or a handler that raises gets an error
  reply. Nobody else notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any, Protocol

from kvraft.errors import (
    WIRE_ERRORS,
    CallTimeout,
    ConnectionLost,
    KVError,
    ProtocolError,
    RemoteError,
)
from kvraft.rpc.codec import Notify, Reply, Request, decode_envelope, encode_envelope
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, frame

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 1.0


class UnknownMethod(Exception):
    """Raised by a handler for a method it does not serve."""


class Handler(Protocol):
    """What an :class:`RpcServer` dispatches to."""

    async def handle_call(self, method: str, sender: str, args: Any) -> Any:
        """Serve a request; the return value is the reply's result."""

    def handle_notify(self, method: str, sender: str, args: Any) -> None:
        """Take a one-way message; must not block."""


def error_of(exc: BaseException) -> tuple[str, str]:
    """The wire ``[code, message]`` for an exception a handler raised."""
    if isinstance(exc, KVError) and type(exc).__name__ in WIRE_ERRORS:
        return (type(exc).__name__, str(exc))
    if isinstance(exc, RemoteError):
        return (exc.code, exc.message)
    if isinstance(exc, UnknownMethod):
        return ("unknown_method", str(exc))
    if isinstance(exc, ProtocolError):
        return ("bad_request", str(exc))
    return ("internal", f"{type(exc).__name__}: {exc}")


def raise_error(error: tuple[str, str]) -> None:
    """Raise the local exception for a wire error (inverse of :func:`error_of`)."""
    code, message = error
    cls = WIRE_ERRORS.get(code)
    if cls is not None:
        raise cls(message)
    raise RemoteError(code, message)


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; ValueError if it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port address: {address!r}")
    return host, int(port)


# ------------------------------------------------------------------------ server


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            for body in self.decoder.feed(data):
                env = decode_envelope(body)
                if isinstance(env, Request):
                    self._start(env)
                elif isinstance(env, Notify):
                    self.server.handler.handle_notify(env.method, env.sender, env.args)
                else:
                    raise ProtocolError("a client sent a reply frame")
        except ProtocolError as exc:
            log.warning("%s: closing connection from %s: %s", self.server.name, self.peer, exc)
            if self.transport is not None:
                self.transport.abort()

    def _start(self, req: Request) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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
        if self.transport is not None and not self.transport.is_closing():
            try:
                body = encode_envelope(reply)
            except TypeError as exc:
                log.error("%s: cannot encode reply to %r: %s", self.server.name, req.method, exc)
                body = encode_envelope(Reply(req.request_id, ("internal", str(exc)), None))
            self.transport.write(frame(body))


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
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            for task in list(conn.tasks):
                task.cancel()
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


# ------------------------------------------------------------------------ client


class _ClientConnection(asyncio.Protocol):
    def __init__(self, owner: RpcClient) -> None:
        self.owner = owner
        self.decoder = FrameDecoder(owner.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.owner._conn is self:
            self.owner._conn = None
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"connection to {self.owner.address} lost"))

    def data_received(self, data: bytes) -> None:
        try:
            for body in self.decoder.feed(data):
                env = decode_envelope(body)
                if not isinstance(env, Reply):
                    raise ProtocolError("server sent a non-reply frame")
                fut = self.pending.pop(env.request_id, None)
                if fut is None or fut.done():
                    continue  # the call timed out already
                if env.error is None:
                    fut.set_result(env.result)
                else:
                    fut.set_exception(_exception_of(env.error))
        except ProtocolError as exc:
            log.warning("closing connection to %s: %s", self.owner.address, exc)
            if self.transport is not None:
                self.transport.abort()


def _exception_of(error: tuple[str, str]) -> Exception:
    try:
        raise_error(error)
    except Exception as exc:
        return exc
    raise AssertionError("unreachable")


class RpcClient:
    """Calls to one server address over one (re)connecting TCP connection."""

    def __init__(
        self,
        address: str,
        sender: str,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.sender = sender
        self.max_frame_bytes = max_frame_bytes
        self.connect_timeout_s = connect_timeout_s
        self._conn: _ClientConnection | None = None
        self._connecting: asyncio.Future[_ClientConnection] | None = None
        self._ids = itertools.count(1)
        self._closed = False

    async def _connection(self) -> _ClientConnection:
        conn = self._conn
        if conn is not None and conn.transport is not None:
            return conn
        if self._closed:
            raise ConnectionLost(f"client for {self.address} is closed")
        if self._connecting is None:
            fut: asyncio.Future[_ClientConnection] = asyncio.get_running_loop().create_future()
            self._connecting = fut
            try:
                conn = await self._open()
                fut.set_result(conn)
            except ConnectionLost as exc:
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: other waiters may not exist
                raise
            finally:
                self._connecting = None
            return conn
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _ClientConnection(self), self.host, self.port),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {self.address}: {exc}") from None
        if self._closed:
            assert proto.transport is not None
            proto.transport.abort()
            raise ConnectionLost(f"client for {self.address} is closed")
        self._conn = proto
        return proto

    async def call(self, method: str, args: Any, timeout: float) -> Any:
        """Send a request and wait for its reply.

        Raises the service's error if the reply carries one, RemoteError for
        other remote errors, CallTimeout after ``timeout`` seconds, and
        ConnectionLost if the connection cannot be opened or drops meanwhile.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            conn = await asyncio.wait_for(self._connection(), timeout)
        except TimeoutError:
            raise CallTimeout(f"{method} to {self.address}: no connection in {timeout}s") from None
        rid = next(self._ids)
        body = frame(encode_envelope(Request(rid, method, self.sender, args)))
        if len(body) - 4 > self.max_frame_bytes:
            raise ValueError(f"request of {len(body) - 4} bytes exceeds the frame maximum")
        fut: asyncio.Future[Any] = loop.create_future()
        conn.pending[rid] = fut
        assert conn.transport is not None
        conn.transport.write(body)
        try:
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise CallTimeout(f"{method} to {self.address}: no reply in {timeout}s") from None
        finally:
            conn.pending.pop(rid, None)

    def notify(self, method: str, args: Any) -> bool:
        """Send a one-way message if connected; else start connecting and drop it.

        Returns whether the message was written. Dropping is what a lossy
        network would do anyway, and Raft retransmits.
        """
        conn = self._conn
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(frame(encode_envelope(Notify(method, self.sender, args))))
            return True
        if self._connecting is None and not self._closed:
            task = asyncio.get_running_loop().create_task(self._connect_quietly())
            _background.add(task)
            task.add_done_callback(_background.discard)
        return False

    async def _connect_quietly(self) -> None:
        with contextlib.suppress(ConnectionLost):
            await self._connection()

    def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionLost."""
        self._closed = True
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()


_background: set[asyncio.Task[None]] = set()


def install_event_loop_policy() -> str:
    """Use uvloop when importable; return the name of the loop in use."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
