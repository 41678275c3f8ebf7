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

Peer identity (see :mod:`kvraft.rpc.peer_auth`): a frame's sender is the
sender's claim, so a connection speaks for a peer only after the peer
handshake proved it. A frame that claims a peer identity (a ``p<id>``
sender, or one of the server's ``peer_methods``) on a connection that did
not authenticate as that peer closes the connection, with one log line
(node, remote address, the claim; never the secret). The handler is given
the connection's authenticated peer id (``peer_id``), never the claim.
``insecure_peers`` turns this off (the claim is believed), for clusters run
on a trusted network with ``--insecure-peers``.

Admission (:class:`ConnectionLimits`, every bound tested at it and one past):
at most ``max_connections`` connections at once (one more is closed at
once; refusals logged once per :data:`REFUSALS_PER_LOG_LINE`); a connection
that completes no frame and runs no handler for ``idle_timeout_s`` is
closed, unless it authenticated as a peer (the cap bounds those); so is
one that started a frame (its header included) and did not finish it
within ``frame_timeout_s`` (slow-header attacks hold a connection and its
buffer with a byte a minute). When a connection goes, its running
handlers are cancelled: their replies could not be delivered anyway.

TLS (:mod:`kvraft.rpc.tls`): with ``tls`` the port speaks only TLS, and a
connection whose certificate was issued by the peer CA is a *TLS peer*: it
may run the peer handshake with a TLS-vouched key (no secret), and when the
port does peer TLS, a secret handshake is taken only from a TLS peer.

Client tokens (:mod:`kvraft.rpc.tokens`): with ``tokens`` every request from
a connection that is not an authenticated peer is checked against the role
of the token the connection presented (the ``token`` handshake step, one
per connection, answered with the role's name or None); a request its role
does not allow gets ``Unauthorized`` and runs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from kvraft.errors import KVError, ProtocolError, RemoteError, Unauthorized
from kvraft.rpc.admission import REFUSALS_PER_LOG_LINE, ConnectionLimits
from kvraft.rpc.coalescer import Coalescer, as_stream
from kvraft.rpc.codec import (
    Handshake,
    Notify,
    Reply,
    Request,
    decode_envelope,
    encode_envelope,
    peer_sender,
    sender_peer_id,
)
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, frame
from kvraft.rpc.peer_auth import CHALLENGE, HELLO, PROOF, WELCOME, AuthError, Membership, Responder
from kvraft.rpc.tls import ServerTls
from kvraft.rpc.tokens import TOKEN_STEP, Role, TokenTable
from kvraft.rpc.wire_errors import UnknownMethod, error_of

log = logging.getLogger(__name__)

# Requests a server runs at once for one connection before it stops reading it.
MAX_IN_FLIGHT = 4096
# How long RpcServer.close() waits for cancelled handlers to finish.
CLOSE_GRACE_S = 1.0


class Handler(Protocol):
    """What an :class:`RpcServer` dispatches to.

    ``peer_id`` is the peer the connection authenticated as (or, with
    ``insecure_peers``, the peer its sender claims); None for everyone else.
    It is the only identity a handler may act on as a peer's.
    """

    async def handle_call(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> Any:
        """Serve a request; the return value is the reply's result.

        Raise a service error (``kvraft.errors.WIRE_ERRORS``) to have the caller
        see it as itself, :class:`UnknownMethod` for a method not served, and
        ProtocolError for bad arguments; anything else answers ``internal``.
        """

    def handle_notify(self, method: str, sender: str, args: Any, *, peer_id: int | None) -> None:
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
        # Peer authentication: the handshake in progress, then the peer proven.
        self._responder: Responder | None = None
        self.peer_id: int | None = None
        # Whether the TLS certificate was the peer CA's; the token's role
        # (None: no token, or one refused), once the token step ran.
        self.tls_peer = False
        self.role: Role | None = None
        self._token_seen = False
        self._closed = False
        # Admission timers: when the last frame completed, when the partial
        # frame in the decoder began (None: none), and the timers that check.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_frame = 0.0
        self._partial_since: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._frame_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = as_stream(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        server = self.server
        if len(server.connections) >= server.limits.max_connections:
            self._closed = True
            server.refuse_connection(self.peer)
            self.transport.abort()
            self.transport = None
            return
        self.out = Coalescer(self.transport)
        server.connections.add(self)
        if server.tls is not None:
            self.tls_peer = server.tls.is_peer(transport.get_extra_info("ssl_object"))
        self._loop = asyncio.get_running_loop()
        self._last_frame = self._loop.time()
        self._idle_timer = self._loop.call_later(server.limits.idle_timeout_s, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        # Handlers still running are cancelled: nobody can receive their replies.
        self._closed = True
        self.server.connections.discard(self)
        self.transport = None
        for timer in (self._idle_timer, self._frame_timer):
            if timer is not None:
                timer.cancel()
        for task in list(self.tasks):
            task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        server = self.server
        if self.peer_id is None:
            server.client_bytes_received += len(data)
        else:
            received = server.peer_bytes_received
            received[self.peer_id] = received.get(self.peer_id, 0) + len(data)
        try:
            bodies = self.decoder.feed(data)
            for body in bodies:
                if self._closed:
                    return
                env = decode_envelope(body)
                if isinstance(env, Handshake) and env.step == TOKEN_STEP:
                    self._take_token(env.args)
                elif isinstance(env, Handshake):
                    self._handshake(env)
                elif isinstance(env, Reply):
                    raise ProtocolError("a client sent a reply frame")
                elif isinstance(env, Request):
                    peer_id = self._identity(env.method, env.sender)
                    refusal = self._refusal(env.method, peer_id)
                    if refusal is None:
                        self._start(env, peer_id)
                    else:
                        self._reply(Reply(env.request_id, error_of(refusal), None), env.method)
                else:
                    peer_id = self._identity(env.method, env.sender)
                    refusal = self._refusal(env.method, peer_id)
                    if refusal is not None:
                        raise ProtocolError(f"notify {env.method!r} refused: {refusal}")
                    self._notify(env, peer_id)
        except ProtocolError as exc:
            self.refuse(f"{exc}")
            return
        self._track_frames(bool(bodies))

    def refuse(self, reason: str) -> None:
        """Drop this connection because the remote side broke the protocol (logged once)."""
        if self._closed:
            return
        self._closed = True
        log.warning("%s: closing connection from %s: %s", self.server.name, self.peer, reason)
        if self.transport is not None:
            self.transport.abort()

    # -- peer identity

    def _identity(self, method: str, sender: str) -> int | None:
        """The peer a frame may be taken from, or None; ProtocolError if it claims too much."""
        server = self.server
        if server.insecure_peers:
            return sender_peer_id(sender)
        claims_peer = sender.startswith("p") or method in server.peer_methods
        if self.peer_id is None:
            if claims_peer:
                raise ProtocolError(
                    f"refused a {method!r} frame claiming peer {sender!r}: "
                    "the connection did not authenticate as a peer"
                )
            return None
        if sender.startswith("p") and sender != peer_sender(self.peer_id):
            raise ProtocolError(
                f"refused a {method!r} frame claiming peer {sender!r} on a connection "
                f"authenticated as p{self.peer_id}"
            )
        return self.peer_id

    # -- client tokens

    def _take_token(self, token: Any) -> None:
        """The token step: note the token's role and answer with its name (None: refused)."""
        server = self.server
        if self._token_seen:
            raise ProtocolError("a second token on one connection")
        self._token_seen = True
        if server.tokens is None:
            self.role = Role.ADMIN
        else:
            self.role = server.tokens.role_of(token)
            if self.role is None:
                log.warning("%s: refused a token from %s", server.name, self.peer)
        name = self.role.name.lower() if self.role is not None else None
        self._send(Handshake(TOKEN_STEP, server.name, name))

    def _refusal(self, method: str, peer_id: int | None) -> Unauthorized | None:
        """Why this connection's role may not call ``method``, or None if it may."""
        server = self.server
        tokens = server.tokens
        if tokens is None or self.peer_id is not None:
            return None  # no tokens, or an authenticated member: trusted
        if server.insecure_peers and peer_id is not None and method in server.peer_methods:
            return None  # a believed peer's Raft traffic: it has no token
        needed = tokens.needs(method)
        if self.role is None:
            what = "a token it does not know" if self._token_seen else "no token"
            return Unauthorized(f"{method}: the server requires a token and was given {what}")
        if self.role < needed:
            return Unauthorized(
                f"{method} needs the {needed.name.lower()} role; this token has"
                f" {self.role.name.lower()}"
            )
        return None

    # -- peer handshake

    def _handshake(self, env: Handshake) -> None:
        """One step of the peer handshake, answered in order on this connection."""
        server = self.server
        membership = server.peer_auth
        if membership is None:
            raise AuthError(f"peer handshake from {env.sender!r}: this server takes no peers")
        if self.peer_id is not None:
            raise AuthError(f"handshake {env.step!r} on a connection authenticated already")
        if server.peer_tls and not self.tls_peer:
            raise AuthError(
                f"peer handshake from {env.sender!r} on a connection without a peer certificate"
            )
        if env.step == HELLO and membership.key.tls_vouched:
            responder = membership.responder()
            try:
                responder.read_hello(env.args)
            except AuthError as exc:
                raise AuthError(f"refused peer hello claiming {env.sender!r}: {exc}") from None
            assert responder.claimed is not None
            if env.sender != peer_sender(responder.claimed):
                raise AuthError(f"hello from {env.sender!r} claims p{responder.claimed}")
            self.peer_id = responder.claimed
            self._send(Handshake(WELCOME, peer_sender(membership.node_id), None))
            log.debug(
                "%s: %s authenticated by certificate as p%d", server.name, self.peer, self.peer_id
            )
        elif env.step == HELLO and self._responder is None:
            self._responder = membership.responder()
            try:
                args: Any = self._responder.challenge(env.args)
            except AuthError as exc:
                raise AuthError(f"refused peer hello claiming {env.sender!r}: {exc}") from None
            claimed = self._responder.claimed
            assert claimed is not None
            if env.sender != peer_sender(claimed):
                raise AuthError(f"hello from {env.sender!r} claims p{claimed}")
            self._send(Handshake(CHALLENGE, peer_sender(membership.node_id), args))
        elif env.step == PROOF and self._responder is not None:
            try:
                self.peer_id = self._responder.verify(env.args)
            except AuthError as exc:
                raise AuthError(f"refused peer proof claiming {env.sender!r}: {exc}") from None
            self._send(Handshake(WELCOME, peer_sender(membership.node_id), None))
            log.debug("%s: %s authenticated as p%d", server.name, self.peer, self.peer_id)
        else:
            raise AuthError(f"unexpected handshake step {env.step!r} from {env.sender!r}")

    def _send(self, env: Handshake) -> None:
        if self.out is not None and self.transport is not None:
            data = frame(encode_envelope(env))
            self.server.bytes_sent += len(data)
            self.out.write(data)

    # -- admission timers

    def _track_frames(self, completed: bool) -> None:
        """After a read: note activity, and start or stop timing the partial frame."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if completed:
            self._last_frame = now
        if not self.decoder.buffered:
            self._partial_since = None
        elif completed or self._partial_since is None:
            self._partial_since = now  # a new frame began in this read
        if self._partial_since is not None and self._frame_timer is None:
            self._frame_timer = loop.call_later(
                self.server.limits.frame_timeout_s, self._check_frame
            )

    def _check_frame(self) -> None:
        self._frame_timer = None
        since, loop = self._partial_since, self._loop
        if self._closed or since is None or loop is None:
            return
        timeout = self.server.limits.frame_timeout_s
        if self._read_paused:  # we stopped reading, not the remote side
            self._partial_since = since = loop.time()
        left = since + timeout - loop.time()
        if left <= 0:
            self.refuse(f"a frame not completed within {timeout:g}s of its first byte")
        else:
            self._frame_timer = loop.call_later(left, self._check_frame)

    def _check_idle(self) -> None:
        self._idle_timer = None
        loop = self._loop
        if self._closed or loop is None:
            return
        timeout = self.server.limits.idle_timeout_s
        # A handler still working for it is activity; so is a connection that proved
        # it is a peer: followers send each other nothing between elections, and a
        # vote request must not meet a connection closed for idling (its first copy
        # would be dropped while the candidate reconnects).
        if self.tasks or self.peer_id is not None:
            self._last_frame = loop.time()
        left = self._last_frame + timeout - loop.time()
        if left <= 0:
            self._closed = True
            log.info(
                "%s: closing connection from %s: idle for %gs", self.server.name, self.peer, timeout
            )
            if self.transport is not None:
                self.transport.abort()
        else:
            self._idle_timer = loop.call_later(left, self._check_idle)

    # -- dispatch

    def _notify(self, env: Notify, peer_id: int | None) -> None:
        try:
            self.server.handler.handle_notify(env.method, env.sender, env.args, peer_id=peer_id)
        except ProtocolError:
            raise
        except Exception:
            log.exception("%s: notify handler for %r raised", self.server.name, env.method)

    def _start(self, req: Request, peer_id: int | None) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(req, peer_id))
        self.tasks.add(task)
        task.add_done_callback(self._done)
        if len(self.tasks) >= MAX_IN_FLIGHT:
            self._update_reading()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self._read_paused:
            self._update_reading()

    async def _serve(self, req: Request, peer_id: int | None) -> None:
        handler = self.server.handler
        try:
            result = await handler.handle_call(req.method, req.sender, req.args, peer_id=peer_id)
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
        data = frame(body)
        self.server.bytes_sent += len(data)
        out.write(data)

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
    """Listens on TCP and dispatches frames to a :class:`Handler`.

    ``peer_auth``: this node's membership, to run the peer handshake; without
    it (and without ``insecure_peers``) no connection can speak for a peer.
    ``peer_methods``: methods only an authenticated peer may send (a node's
    ``raft``). ``limits``: the admission bounds.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        name: str = "rpc",
        peer_auth: Membership | None = None,
        insecure_peers: bool = False,
        peer_methods: frozenset[str] = frozenset(),
        limits: ConnectionLimits | None = None,
        tls: ServerTls | None = None,
        tokens: TokenTable | None = None,
    ) -> None:
        if peer_auth is not None and insecure_peers:
            raise ValueError("a server either authenticates its peers or believes them, not both")
        vouched = peer_auth is not None and peer_auth.key.tls_vouched
        if vouched and (tls is None or not tls.peer_ca_subjects):
            raise ValueError("a TLS-vouched peer key needs peer TLS on the port")
        self.handler = handler
        self.max_frame_bytes = max_frame_bytes
        self.name = name
        self.peer_auth = peer_auth
        self.insecure_peers = insecure_peers
        self.peer_methods = peer_methods
        self.limits = limits if limits is not None else ConnectionLimits()
        self.tls = tls
        # Whether peers must present a peer certificate (besides any secret).
        self.peer_tls = tls is not None and bool(tls.peer_ca_subjects)
        self.tokens = tokens
        self.connections: set[_ServerConnection] = set()
        #: Connections closed at once because max_connections were open.
        self.refused_connections = 0
        #: Bytes read, by proven peer id (once its handshake finished) and from
        #: everyone else (clients, strangers, handshakes); bytes written (replies
        #: and handshake steps). Read by the server's metrics at scrape time.
        self.peer_bytes_received: dict[int, int] = {}
        self.client_bytes_received = 0
        self.bytes_sent = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one); OSError if taken."""
        assert self._server is None, "server already started"
        loop = asyncio.get_running_loop()
        context = self.tls.context if self.tls is not None else None
        self._server = await loop.create_server(
            lambda: _ServerConnection(self),
            host,
            port,
            reuse_address=True,
            ssl=context,
            ssl_handshake_timeout=self.limits.frame_timeout_s if context is not None else None,
        )

    def refuse_connection(self, remote: str) -> None:
        """Count a connection closed over the cap; log the first of every REFUSALS_PER_LOG_LINE."""
        self.refused_connections += 1
        if self.refused_connections % REFUSALS_PER_LOG_LINE == 1:
            log.warning(
                "%s: refused a connection from %s: %d connections open, the maximum "
                "(%d refused so far; logged once per %d)",
                self.name,
                remote,
                len(self.connections),
                self.refused_connections,
                REFUSALS_PER_LOG_LINE,
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
