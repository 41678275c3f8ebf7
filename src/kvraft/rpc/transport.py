"""RPC over TCP with asyncio: one server class, one client-connection class.

Both are asyncio Protocols (callbacks, not streams) because every Raft message
and every client operation crosses here; the framing and codec stay sans-I/O.

- Many requests share one connection; replies are matched by request id and may
  come back in any order.
- Every call has a timeout, the connect included. A lost connection fails all
  its pending calls at once with :class:`ConnectionLost`; the next call opens a
  new connection. Concurrent callers share one connection attempt.
- Bad input from the network is the remote side's fault: an oversize or
  undecodable frame closes that one connection with one log line; a request
  with an unknown method, bad arguments, or a handler that raises gets an error
  reply. Nobody else notices.
- A reply over the frame maximum fails only its own call, with
  ``RemoteError("reply_too_large")``: the server checks against its maximum
  before sending, the client against its own (skipping the frame unread).
- Frames written in one loop iteration leave in one write (the first at
  once, so a lone call waits for nothing): one send() for many replies.
- Memory stays bounded when a peer stops reading: a server stops reading
  requests from a connection while its replies back up or while it has
  :data:`MAX_IN_FLIGHT` handlers running for it; a client drops notifications
  (as a lossy network would) once :data:`NOTIFY_BUFFER_LIMIT_BYTES` are queued.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import typing
from typing import Any, Protocol

from kvraft.addresses import split_address
from kvraft.errors import (
    WIRE_ERRORS,
    CallTimeout,
    ConnectFailed,
    ConnectionLost,
    KVError,
    ProtocolError,
    RemoteError,
)
from kvraft.rpc.codec import (
    Notify,
    Reply,
    Request,
    decode_envelope,
    encode_envelope,
    reply_id_of_head,
)
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES, HEADER, FrameDecoder, frame

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 1.0
# Requests a server runs at once for one connection before it stops reading it.
MAX_IN_FLIGHT = 4096
# Bytes a client lets queue on a connection before notify() drops messages.
NOTIFY_BUFFER_LIMIT_BYTES = 8 * 1024 * 1024
# How long RpcServer.close() waits for cancelled handlers to finish.
CLOSE_GRACE_S = 1.0


class UnknownMethod(Exception):
    """Raised by a handler for a method it does not serve."""


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


def exception_of(error: tuple[str, str]) -> Exception:
    """The local exception for a wire error (inverse of :func:`error_of`)."""
    code, message = error
    cls = WIRE_ERRORS.get(code)
    if cls is not None:
        return cls(message)
    return RemoteError(code, message)


def _stream(transport: asyncio.BaseTransport) -> asyncio.Transport:
    # uvloop's TCPTransport has the whole asyncio.Transport API without
    # subclassing it, so an isinstance check here would refuse every uvloop
    # connection.
    return typing.cast(asyncio.Transport, transport)


class _Coalescer:
    """Writes frames to one transport, coalescing those of one loop iteration.

    The first write of an iteration goes straight to the transport, so a lone
    call pays no added latency; later ones in the same iteration are joined
    and written once, from a callback that runs when the iteration ends (with
    64 calls in flight: one send() per batch instead of one per frame).
    Invariant: frames reach the transport in the order written.
    """

    __slots__ = ("_batch", "_batch_bytes", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._batch: list[bytes] | None = None  # None: nothing written this iteration
        self._batch_bytes = 0

    def write(self, data: bytes) -> None:
        """Queue ``data``; the caller checked the transport is not closing."""
        if self._batch is None:
            self.transport.write(data)
            self._batch = []
            self._loop.call_soon(self._flush)
        else:
            self._batch.append(data)
            self._batch_bytes += len(data)

    def _flush(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, None, 0
        if batch and not self.transport.is_closing():
            self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size() + self._batch_bytes


# ------------------------------------------------------------------------ server


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.out: _Coalescer | None = None
        self.peer = "?"
        self.tasks: set[asyncio.Task[None]] = set()
        self._write_paused = False
        self._read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = _stream(transport)
        self.out = _Coalescer(self.transport)
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


# ------------------------------------------------------------------------ client


class _ClientConnection(asyncio.Protocol):
    def __init__(self, owner: RpcClient) -> None:
        self.owner = owner
        self.decoder = FrameDecoder(owner.max_frame_bytes, on_oversize=self._oversize)
        self.transport: asyncio.Transport | None = None
        self.out: _Coalescer | None = None
        # Invariant: every future in pending belongs to a call still waiting.
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self._reason: str | None = None

    def usable(self) -> bool:
        """Whether a request written now can still be answered."""
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = _stream(transport)
        self.out = _Coalescer(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._reason is None:
            self._reason = f"{exc}" if exc is not None else "closed by the server"
        self._drop()

    def data_received(self, data: bytes) -> None:
        try:
            for body in self.decoder.feed(data):
                env = decode_envelope(body)
                if not isinstance(env, Reply):
                    raise ProtocolError("server sent a non-reply frame")
                fut = self.pending.pop(env.request_id, None)
                if fut is None or fut.done():
                    continue  # the call timed out or was cancelled already
                if env.error is None:
                    fut.set_result(env.result)
                else:
                    fut.set_exception(exception_of(env.error))
        except ProtocolError as exc:
            log.warning("closing connection to %s: %s", self.owner.address, exc)
            self.abort(f"{exc}")

    def _oversize(self, length: int, head: bytes) -> None:
        fut = self.pending.pop(reply_id_of_head(head), None)
        if fut is not None and not fut.done():
            message = (
                f"reply of {length} bytes exceeds this client's maximum of "
                f"{self.owner.max_frame_bytes}"
            )
            fut.set_exception(RemoteError("reply_too_large", message))

    def abort(self, reason: str) -> None:
        """Close now and fail every pending call with ConnectionLost(reason)."""
        if self._reason is None:
            self._reason = reason
        if self.transport is not None:
            self.transport.abort()
        self._drop()

    def _drop(self) -> None:
        if self.owner._conn is self:
            self.owner._conn = None
        pending, self.pending = self.pending, {}
        if pending:
            message = f"connection to {self.owner.address} lost: {self._reason}"
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionLost(message))


def _expire(fut: asyncio.Future[Any], message: str) -> None:
    if not fut.done():
        fut.set_exception(CallTimeout(message))


class RpcClient:
    """Calls to one server address over one (re)connecting TCP connection.

    Not thread-safe: use it from the event loop that first used it.
    """

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
        # Invariant: _conn is None or was usable when last checked; every
        # caller re-checks usable() after any await.
        self._conn: _ClientConnection | None = None
        # The one connection attempt in progress, shared by every caller.
        self._connecting: asyncio.Task[_ClientConnection] | None = None
        self._ids = itertools.count(1)
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (a call may still find it lost)."""
        return self._conn is not None and self._conn.usable()

    def _encode(self, env: Request | Notify) -> bytes:
        body = encode_envelope(env)
        if len(body) > self.max_frame_bytes:
            raise ValueError(
                f"{env.method}: message of {len(body)} bytes exceeds the frame maximum "
                f"of {self.max_frame_bytes}"
            )
        return HEADER.pack(len(body)) + body

    async def call(self, method: str, args: Any, timeout: float) -> Any:
        """Send a request and wait for its reply.

        Raises the service's error if the reply carries one, RemoteError for
        other remote errors (``unknown_method``, ``bad_request``, ``internal``,
        ``reply_too_large``), CallTimeout after ``timeout`` seconds (connecting
        included), and ConnectionLost if the connection cannot be opened or
        drops meanwhile. Args the wire cannot carry raise TypeError, and a
        request over the frame maximum ValueError, before anything is sent.
        """
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        data = self._encode(Request(rid, method, self.sender, args))
        conn = self._conn
        if conn is None or not conn.usable():
            start = loop.time()
            conn = await self._connection(method, timeout)
            timeout -= loop.time() - start
        assert conn.out is not None
        fut: asyncio.Future[Any] = loop.create_future()
        conn.pending[rid] = fut
        conn.out.write(data)
        expiry = loop.call_later(
            max(0.0, timeout), _expire, fut, f"{method} to {self.address}: no reply in time"
        )
        try:
            return await fut
        finally:
            expiry.cancel()
            conn.pending.pop(rid, None)

    async def _connection(self, method: str, timeout: float) -> _ClientConnection:
        """A usable connection, opened or joined within ``timeout`` seconds."""
        if self._closed:
            raise ConnectionLost(f"client for {self.address} is closed")
        task = self._connecting or self._start_connecting()
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                conn = await asyncio.shield(task)
        except TimeoutError:
            raise CallTimeout(f"{method} to {self.address}: no connection in time") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # close() cancelled the attempt before it began; this caller was not cancelled
                raise ConnectionLost(f"client for {self.address} is closed") from None
            raise
        if not conn.usable():  # it dropped before this caller resumed
            raise ConnectionLost(f"connection to {self.address} lost: {conn._reason}")
        return conn

    def _start_connecting(self) -> asyncio.Task[_ClientConnection]:
        task = asyncio.get_running_loop().create_task(self._open())
        self._connecting = task
        task.add_done_callback(self._connect_done)
        return task

    def _connect_done(self, task: asyncio.Task[_ClientConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: a failure may have had no waiter (notify)

    async def _open(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, proto = await loop.create_connection(
                    lambda: _ClientConnection(self), self.host, self.port
                )
        except TimeoutError:  # (an OSError too, so first)
            reason = f"timed out after {self.connect_timeout_s}s"
            raise ConnectFailed(f"cannot connect to {self.address}: {reason}") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.address}: {exc}") from None
        except asyncio.CancelledError:
            if self._closed:  # close() cancelled us: waiters see ConnectionLost
                raise ConnectionLost(f"client for {self.address} is closed") from None
            raise
        if self._closed:
            proto.abort("client closed")
            raise ConnectionLost(f"client for {self.address} is closed")
        if not proto.usable():
            raise ConnectionLost(f"connection to {self.address} lost: {proto._reason}")
        self._conn = proto
        return proto

    def notify(self, method: str, args: Any) -> bool:
        """Send a one-way message if connected; else start connecting and drop it.

        Returns whether the message was written. It is dropped, as a lossy
        network would, also when the server has not read the last
        ``NOTIFY_BUFFER_LIMIT_BYTES`` sent; Raft retransmits. Args the wire
        cannot carry raise TypeError, a message over the frame maximum ValueError.
        """
        data = self._encode(Notify(method, self.sender, args))
        conn = self._conn
        if conn is not None and conn.usable():
            assert conn.out is not None
            if conn.out.buffered() > NOTIFY_BUFFER_LIMIT_BYTES:
                return False
            conn.out.write(data)
            return True
        if self._connecting is None and not self._closed:
            self._start_connecting()
        return False

    def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionLost at once."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        conn = self._conn
        if conn is not None:
            conn.abort("client closed")


def install_event_loop_policy() -> str:
    """Use uvloop when importable; return the name of the loop in use."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
