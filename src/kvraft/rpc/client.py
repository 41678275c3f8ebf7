"""The RPC client: calls to one server address over one (re)connecting connection.

An asyncio Protocol (callbacks, not streams), like the server's side.

- Many calls share one connection; replies are matched by request id and may
  come back in any order.
- Every call has a timeout, the connect included. A lost connection fails all
  its pending calls at once with :class:`~kvraft.errors.ConnectionLost`; the
  next call opens a new connection. Concurrent callers share one connection
  attempt.
- A call that fails before its request was handed to a connection (refused,
  connect timed out, closed or dropped before the write) raises
  :class:`~kvraft.errors.NotSent` (``ConnectFailed``, ``ConnectTimeout``):
  the server surely did not run it. Any other failure (``CallTimeout``,
  ``ConnectionLost``) leaves the outcome unknown. A frame queued in the
  write coalescer when its connection drops counts as sent: unknown is the
  safe side of that rare race.
- A reply over this client's frame maximum fails only its own call, with
  ``RemoteError("reply_too_large")``, and is skipped unread.
- Memory stays bounded when a server stops reading: :meth:`RpcClient.notify`
  drops messages (as a lossy network would) once
  :data:`NOTIFY_BUFFER_LIMIT_BYTES` are queued.
- A client built with a ``peer_key`` speaks for a Raft peer: each connection
  it opens runs the peer handshake (:mod:`kvraft.rpc.peer_auth`) before
  anything else is written on it, and counts as open only once the server
  welcomed it. A handshake that fails or takes over
  :data:`HANDSHAKE_TIMEOUT_S` (the proxy dropped a frame, a wrong secret)
  fails that attempt like a refused connect: the next call or notify opens
  a new one. A key vouched for by peer TLS (no secret) needs ``ssl``.
- ``ssl`` (an :class:`ssl.SSLContext`) makes every connection TLS, its
  handshake within the connect timeout; a certificate that does not verify
  fails the connect (``ConnectFailed``, with OpenSSL's reason).
- A client built with a ``token`` presents it as each connection's first
  frame and waits for the server's answer (a fault proxy may hold frames
  apart, so a request must not overtake it); a token the server refuses
  fails every call with :class:`~kvraft.errors.Unauthorized`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl as ssl_module
from typing import Any

from kvraft.addresses import split_address
from kvraft.errors import (
    CallTimeout,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    NotSent,
    ProtocolError,
    RemoteError,
    Unauthorized,
)
from kvraft.rpc.coalescer import Coalescer, as_stream
from kvraft.rpc.codec import (
    Handshake,
    Notify,
    Reply,
    Request,
    decode_envelope,
    encode_envelope,
    reply_id_of_head,
    sender_peer_id,
)
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES, HEADER, FrameDecoder
from kvraft.rpc.peer_auth import CHALLENGE, HELLO, PROOF, WELCOME, AuthError, Initiator, PeerKey
from kvraft.rpc.tokens import TOKEN_STEP
from kvraft.rpc.wire_errors import exception_of

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 1.0
# Bytes a client lets queue on a connection before notify() drops messages.
NOTIFY_BUFFER_LIMIT_BYTES = 8 * 1024 * 1024
# How long a peer handshake may take, both round trips together.
HANDSHAKE_TIMEOUT_S = 2.0
# A client told to keep_connected() tries again this long after a lost
# connection or a failed attempt (a dead peer costs one refused connect per).
RECONNECT_INTERVAL_S = 0.1


class _ClientConnection(asyncio.Protocol):
    def __init__(self, owner: RpcClient) -> None:
        self.owner = owner
        self.decoder = FrameDecoder(owner.max_frame_bytes, on_oversize=self._oversize)
        self.transport: asyncio.Transport | None = None
        self.out: Coalescer | None = None
        # Invariant: every future in pending belongs to a call still waiting.
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self._reason: str | None = None
        # Handshake frames from the server, in order; None once the connection is lost.
        self.handshakes: asyncio.Queue[Handshake | None] = asyncio.Queue()
        self._heard = False  # whether the server sent anything on this connection

    def usable(self) -> bool:
        """Whether a request written now can still be answered."""
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = as_stream(transport)
        self.out = Coalescer(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.handshakes.put_nowait(None)
        if self._reason is None and exc is not None:
            self._reason = f"{exc}"
        elif self._reason is None and not self._heard and self.owner.ssl is None:
            # What a plaintext client meets at a server with --cert-file.
            self._reason = (
                "closed by the server before any answer"
                " (a TLS server? connect with ssl=; or over its connection cap)"
            )
        elif self._reason is None:
            self._reason = "closed by the server"
        self._drop()

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self.owner.bytes_received += len(data)
        try:
            for body in self.decoder.feed(data):
                env = decode_envelope(body)
                if isinstance(env, Handshake):
                    # At most the two a handshake expects: more is a server's junk.
                    owner = self.owner
                    if (owner.peer_key is None and owner.token is None) or (
                        self.handshakes.qsize() >= 2
                    ):
                        raise ProtocolError(f"server sent an unexpected handshake {env.step!r}")
                    self.handshakes.put_nowait(env)
                    continue
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
            self.owner._reconnect_later()
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
        peer_key: PeerKey | None = None,
        server_peer_id: int | None = None,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        token: str | None = None,
    ) -> None:
        """``peer_key`` and ``server_peer_id`` (the node at ``address``), given
        together, make every connection authenticate as the peer ``sender`` names.
        ``ssl`` makes connections TLS (``server_hostname``: the name sent and
        checked, the address's host by default); ``token`` is presented on each."""
        if peer_key is not None and peer_key.tls_vouched and ssl is None:
            raise ValueError("a peer key vouched for by TLS needs an ssl context")
        self._initiator_id: int | None = None
        if peer_key is not None:
            self._initiator_id = sender_peer_id(sender)
            if self._initiator_id is None or server_peer_id is None:
                raise ValueError("a peer handshake needs a peer sender and the server's peer id")
        self.peer_key = peer_key
        self.server_peer_id = server_peer_id
        # Whether the last handshake failed its check (its warning logged once).
        self._auth_failing = False
        self.address = address
        self.host, self.port = split_address(address)
        self.sender = sender
        self.max_frame_bytes = max_frame_bytes
        self.connect_timeout_s = connect_timeout_s
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.token = token
        # Invariant: _conn is None or was usable when last checked; every
        # caller re-checks usable() after any await.
        self._conn: _ClientConnection | None = None
        # The one connection attempt in progress, shared by every caller.
        self._connecting: asyncio.Task[_ClientConnection] | None = None
        self._ids = itertools.count(1)
        self._closed = False
        self._keep_connected = False  # reconnect on loss, not only on the next send
        self._reconnect: asyncio.TimerHandle | None = None
        #: Bytes written to and read from the server, over every connection (metrics).
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (a call may still find it lost)."""
        return self._conn is not None and self._conn.usable()

    def _encode(self, env: Request | Notify | Handshake) -> bytes:
        body = encode_envelope(env)
        if len(body) > self.max_frame_bytes:
            what = env.step if isinstance(env, Handshake) else env.method
            raise ValueError(
                f"{what}: message of {len(body)} bytes exceeds the frame maximum "
                f"of {self.max_frame_bytes}"
            )
        return HEADER.pack(len(body)) + body

    async def call(self, method: str, args: Any, timeout: float) -> Any:
        """Send a request and wait for its reply.

        Raises the service's error if the reply carries one, RemoteError for
        other remote errors (``unknown_method``, ``bad_request``, ``internal``,
        ``reply_too_large``), CallTimeout after ``timeout`` seconds (connecting
        included), and ConnectionLost if the connection cannot be opened or
        drops meanwhile. Failures before the request was written are NotSent
        (ConnectFailed, ConnectTimeout). Args the wire cannot carry raise
        TypeError, and a request over the frame maximum ValueError, before
        anything is sent.
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
        self.bytes_sent += len(data)
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
            raise NotSent(f"client for {self.address} is closed")
        task = self._connecting or self._start_connecting()
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                conn = await asyncio.shield(task)
        except TimeoutError:
            raise ConnectTimeout(f"{method} to {self.address}: no connection in time") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # close() cancelled the attempt before it began; this caller was not cancelled
                raise NotSent(f"client for {self.address} is closed") from None
            raise
        if not conn.usable():  # it dropped before this caller resumed
            raise NotSent(f"connection to {self.address} lost: {conn._reason}")
        return conn

    def keep_connected(self, keep: bool = True) -> None:
        """Connect now, and again :data:`RECONNECT_INTERVAL_S` after every lost
        connection or failed attempt, until :meth:`close` or ``keep_connected(False)``
        (then a connection is opened again only for a message, as by default).

        For peers: a one-way :meth:`notify` on no connection is dropped while
        it connects, and Raft resends most messages within a heartbeat, but a
        candidate asks for each vote once per election: a vote request to a
        peer it had never needed to talk to (a follower, a new member) was
        lost, and a leadership transfer to a newly promoted voter failed.
        """
        self._keep_connected = keep
        if keep:
            self._connect_if_down()
        elif self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None

    def _connect_if_down(self) -> None:
        self._reconnect = None
        if self._closed or self._connecting is not None or self.connected:
            return
        self._start_connecting()

    def _reconnect_later(self) -> None:
        if self._keep_connected and not self._closed and self._reconnect is None:
            loop = asyncio.get_running_loop()
            self._reconnect = loop.call_later(RECONNECT_INTERVAL_S, self._connect_if_down)

    def _start_connecting(self) -> asyncio.Task[_ClientConnection]:
        task = asyncio.get_running_loop().create_task(self._open())
        self._connecting = task
        task.add_done_callback(self._connect_done)
        return task

    def _connect_done(self, task: asyncio.Task[_ClientConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled() and task.exception() is not None:
            # (retrieved: a failure may have had no waiter, e.g. a notify's)
            self._reconnect_later()

    async def _open(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, proto = await loop.create_connection(
                    lambda: _ClientConnection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname if self.ssl is not None else None,
                    ssl_handshake_timeout=self.connect_timeout_s if self.ssl is not None else None,
                )
        except TimeoutError:  # (an OSError too, so first)
            reason = f"timed out after {self.connect_timeout_s}s"
            raise ConnectFailed(f"cannot connect to {self.address}: {reason}") from None
        except ssl_module.SSLError as exc:  # (an OSError too) a misconfiguration, not a crash
            self._note_auth_failure(f"TLS handshake failed: {exc}")
            raise ConnectFailed(f"cannot connect to {self.address}: {exc}") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.address}: {exc}") from None
        except asyncio.CancelledError:
            if self._closed:  # close() cancelled us: waiters see NotSent
                raise NotSent(f"client for {self.address} is closed") from None
            raise
        if self._closed:
            proto.abort("client closed")
            raise NotSent(f"client for {self.address} is closed")
        if not proto.usable():
            raise NotSent(f"connection to {self.address} lost: {proto._reason}")
        if self.token is not None:
            await self._present_token(proto)
        if self.peer_key is not None:
            await self._authenticate(proto)
        self._conn = proto
        return proto

    async def _present_token(self, proto: _ClientConnection) -> None:
        """The token step on a new connection; Unauthorized if the server refuses the token."""
        assert self.token is not None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                self._write_handshake(proto, Handshake(TOKEN_STEP, self.sender, self.token))
                answer = await self._next_handshake(proto, TOKEN_STEP)
        except (TimeoutError, AuthError, ConnectionLost) as exc:
            reason = (
                f"timed out after {HANDSHAKE_TIMEOUT_S}s" if isinstance(exc, TimeoutError) else exc
            )
            proto.abort(f"token step failed: {reason}")
            message = f"cannot connect to {self.address}: token step failed: {reason}"
            raise ConnectFailed(message) from None
        except asyncio.CancelledError:
            proto.abort("client closed" if self._closed else "token step cancelled")
            if self._closed:
                raise NotSent(f"client for {self.address} is closed") from None
            raise
        if answer.args is None:
            proto.abort("token refused")
            raise Unauthorized(f"{self.address} refused this client's token")

    async def _authenticate(self, proto: _ClientConnection) -> None:
        """Run the peer handshake on a new connection; ConnectFailed (and closed) if it fails.

        The notifies wait for the welcome rather than follow the proof at once:
        a proxy may delay each frame on its own timer, so only the welcome
        says the server will take them as the peer's.
        """
        assert self.peer_key is not None
        assert self._initiator_id is not None and self.server_peer_id is not None
        initiator = Initiator(self.peer_key, self._initiator_id, self.server_peer_id)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                self._write_handshake(proto, Handshake(HELLO, self.sender, initiator.hello()))
                if not self.peer_key.tls_vouched:  # the certificate vouched: no MACs
                    challenge = await self._next_handshake(proto, CHALLENGE)
                    proof = initiator.proof(challenge.args)
                    self._write_handshake(proto, Handshake(PROOF, self.sender, proof))
                await self._next_handshake(proto, WELCOME)
            self._auth_failing = False
        except (TimeoutError, AuthError, ConnectionLost) as exc:
            reason = (
                f"timed out after {HANDSHAKE_TIMEOUT_S}s" if isinstance(exc, TimeoutError) else exc
            )
            proto.abort(f"peer handshake failed: {reason}")
            if isinstance(exc, AuthError):
                self._note_auth_failure(f"peer handshake failed: {exc}")
            raise ConnectFailed(
                f"cannot connect to {self.address}: peer handshake failed: {reason}"
            ) from None
        except asyncio.CancelledError:
            proto.abort("client closed" if self._closed else "peer handshake cancelled")
            if self._closed:
                raise ConnectionLost(f"client for {self.address} is closed") from None
            raise

    def _note_auth_failure(self, reason: str) -> None:
        """Log a peer's failed TLS or secret handshake once per streak (a node retries often)."""
        if self.peer_key is None or self._auth_failing:
            return
        self._auth_failing = True
        log.warning(
            "%s: connecting to n%s at %s: %s (the same secret, --cluster-id and peer CA on"
            " every node?)",
            self.sender,
            self.server_peer_id,
            self.address,
            reason,
        )

    def _write_handshake(self, proto: _ClientConnection, env: Handshake) -> None:
        if not proto.usable():
            raise ConnectionLost(f"connection to {self.address} lost: {proto._reason}")
        assert proto.out is not None
        data = self._encode(env)
        self.bytes_sent += len(data)
        proto.out.write(data)

    async def _next_handshake(self, proto: _ClientConnection, step: str) -> Handshake:
        """The server's next handshake frame, which must be ``step``."""
        env = await proto.handshakes.get()
        if env is None:
            raise ConnectionLost(f"connection to {self.address} lost: {proto._reason}")
        if env.step != step:
            raise AuthError(f"expected the handshake step {step!r}, got {env.step!r}")
        return env

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
            self.bytes_sent += len(data)
            conn.out.write(data)
            return True
        if self._connecting is None and not self._closed:
            self._start_connecting()
        return False

    def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionLost at once."""
        self._closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None
        if self._connecting is not None:
            self._connecting.cancel()
        conn = self._conn
        if conn is not None:
            conn.abort("client closed")
