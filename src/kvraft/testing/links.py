"""One connection through a fault proxy: the caller's side, the server's, and each frame's fate.

A :class:`Link` pairs a connection the proxy accepted (from a peer or a
client) with the one it opens to the server's private address. It cuts each
direction's byte stream into frames (``rpc/framing.py``), reads just enough
of each to know what it is (``codec.read_head``: kind, request id, method,
sender, the tag of a typed argument) and then forwards, delays or drops the
original frame bytes, never re-encoding anything.

The peer handshake (envelope kind ``HANDSHAKE``, see ``rpc/peer_auth.py``)
is forwarded unchanged and never dropped or delayed at random: it teaches
the link its sender, and obeys disconnections and partitions like any frame
(a handshake cut off costs the peer a reconnect). Dropping it at the random
rates would cost every lossy test a handshake timeout per connection and
test nothing Raft tolerates.

Per message, never per connection: a dropped request simply never reaches the
server, so its caller's call times out exactly as on a lossy network; the
connection stays up. The sender of a connection is learnt from its requests
and notifies (``"p3"``, ``"c<id>"``); a reply travelling back is attributed to
the sender and method of its request. Each delayed message gets its own timer
(``loop.call_later``), so a held-back reply never holds up the ones behind it,
and messages really do arrive reordered. A delayed message is checked against
the fault rules again when its timer fires. A request a test asked to hold
(``NetworkControl.hold_next_request``) is delayed the same way, for as long as
asked; it dies with its connection, as a segment in flight on a reset does.

When the server is down (connection refused) or a side closes, the link
closes the other side too: a crashed server looks like a reset, a cut network
looks like silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvraft.addresses import split_address
from kvraft.errors import ProtocolError
from kvraft.rpc.codec import HANDSHAKE, NOTIFY, REPLY, REQUEST, Head, read_head
from kvraft.rpc.framing import FrameDecoder, frame
from kvraft.testing.faults import Kind, NetworkProfile, StatsKey

if TYPE_CHECKING:
    from kvraft.testing.proxy import FaultProxy

log = logging.getLogger(__name__)

UPSTREAM_CONNECT_TIMEOUT_S = 2.0

# The proxy's name for each envelope kind (its counters' keys); a frame that is
# no envelope, or a reply from a caller, is ``other``.
_KIND_NAMES: dict[int, Kind] = {
    REQUEST: "request",
    REPLY: "reply",
    NOTIFY: "notify",
    HANDSHAKE: "handshake",
}


def _kind(head: Head | None) -> Kind:
    """The counters' name of a frame's kind."""
    return "other" if head is None else _KIND_NAMES[head.kind]


class Link:
    """One caller connection and its upstream connection to the server."""

    def __init__(self, proxy: FaultProxy, caller: asyncio.Transport) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.caller = caller
        self.server: asyncio.Transport | None = None
        self.closed = False
        # Frames due to the server before its connection is open, in order.
        self.backlog: list[tuple[bytes, StatsKey]] = []
        # Requests forwarded and not yet answered: request id -> (sender, method).
        self.pending: dict[int, tuple[str, str]] = {}
        # Delayed frames: their timers and counter keys (dropped if the link closes).
        self.timers: dict[asyncio.TimerHandle, StatsKey] = {}
        # The latest sender seen on this connection; None until its first frame.
        self.sender: str | None = None
        self.caller_frames = FrameDecoder(proxy.max_frame_bytes)
        self.server_frames = FrameDecoder(proxy.max_frame_bytes)
        proxy.links.add(self)
        self.connect_task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        host, port = split_address(self.proxy.upstream)
        try:
            transport, _ = await asyncio.wait_for(
                self.loop.create_connection(lambda: _ServerSide(self), host, port),
                UPSTREAM_CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            log.debug("%s: server unreachable (%s); closing caller", self.proxy.name, exc)
            self.close()
            return
        if self.closed:
            transport.abort()
            return
        assert isinstance(transport, asyncio.Transport)
        self.server = transport
        backlog, self.backlog = self.backlog, []
        for data, key in backlog:
            self._write(transport, data, key)

    # -- caller -> server

    def from_caller(self, data: bytes) -> None:
        try:
            bodies = self.caller_frames.feed(data)
        except ProtocolError as exc:
            log.warning("%s: closing connection from a caller: %s", self.proxy.name, exc)
            self.close()
            return
        for body in bodies:
            head = read_head(body)
            if head is not None and head.kind != REPLY:
                self.sender = head.sender
            else:
                head = None  # a reply or junk from a caller: the server judges it
            self._pass_to_server(head, frame(body))

    def _pass_to_server(self, head: Head | None, data: bytes) -> None:
        """Count, then drop, delay or forward a frame from the caller (head None: other)."""
        proxy = self.proxy
        sender = head.sender if head is not None else self.sender
        method = head.method if head is not None else None
        key: StatsKey = (_kind(head), method or "?", sender or "?")
        proxy.tally.seen(key, len(data))
        state = proxy.control.state
        if not state.link_up(proxy.server_id, sender):
            proxy.tally.dropped(key)
            return
        delay = 0.0
        if head is not None and head.kind != HANDSHAKE:
            profile = state.profile
            if head.kind == NOTIFY and head.tag in profile.reply_tags:
                dropped, delay = self._reply_fate(profile, key)
            else:
                dropped = proxy.rng.random() < profile.request_drop
                if not dropped:
                    delay = _uniform(proxy, profile.request_delay_s)
            if dropped:
                proxy.tally.dropped(key)
                return
        request_id = head.request_id if head is not None else None
        if head is not None and head.kind == REQUEST:
            assert request_id is not None and sender is not None and method is not None
            self.pending[request_id] = (sender, method)
            # One attribute check unless a test asked to hold a request.
            if state.holds:
                hold = proxy.control.take_hold(proxy.server_id, sender, method)
                if hold:
                    proxy.tally.held(key)
                    delay += hold
        self._schedule(delay, self._deliver_to_server, data, key, sender, request_id)

    def _deliver_to_server(
        self, data: bytes, key: StatsKey, sender: str | None, request_id: int | None
    ) -> None:
        if self.closed or not self.proxy.control.state.link_up(self.proxy.server_id, sender):
            self.proxy.tally.dropped(key)
            if request_id is not None:
                self.pending.pop(request_id, None)
            return
        if self.server is None:
            self.backlog.append((data, key))
        else:
            self._write(self.server, data, key)

    # -- server -> caller

    def from_server(self, data: bytes) -> None:
        try:
            bodies = self.server_frames.feed(data)
        except ProtocolError as exc:
            log.warning("%s: closing connection from the server: %s", self.proxy.name, exc)
            self.close()
            return
        proxy = self.proxy
        for body in bodies:
            head = read_head(body)
            data = frame(body)
            entry = None
            if head is not None and head.kind == REPLY:
                assert head.request_id is not None
                entry = self.pending.pop(head.request_id, None)
            sender, method = entry if entry is not None else (self.sender, "?")
            key: StatsKey = (_kind(head), method, sender or "?")
            proxy.tally.seen(key, len(data))
            state = proxy.control.state
            if not state.link_up(proxy.server_id, sender):
                proxy.tally.dropped(key)
                continue
            delay = 0.0
            if head is not None and head.kind == REPLY:
                dropped, delay = self._reply_fate(state.profile, key)
                if dropped:
                    proxy.tally.dropped(key)
                    continue
            self._schedule(delay, self._deliver_to_caller, data, key, sender)

    def _reply_fate(self, profile: NetworkProfile, key: StatsKey) -> tuple[bool, float]:
        """(dropped, delay) for a reply: drop, else delay and maybe hold back."""
        proxy = self.proxy
        if proxy.rng.random() < profile.reply_drop:
            return True, 0.0
        delay = _uniform(proxy, profile.reply_delay_s)
        if profile.reply_hold and proxy.rng.random() < profile.reply_hold:
            proxy.tally.held(key)
            delay += _uniform(proxy, profile.reply_hold_s)
        return False, delay

    def _deliver_to_caller(self, data: bytes, key: StatsKey, sender: str | None) -> None:
        if self.closed or not self.proxy.control.state.link_up(self.proxy.server_id, sender):
            self.proxy.tally.dropped(key)
            return
        self._write(self.caller, data, key)

    # -- plumbing

    def _schedule(self, delay: float, deliver: Callable[..., None], *args: Any) -> None:
        """Deliver now, or after ``delay`` on a timer of the frame's own."""
        if delay <= 0.0:
            deliver(*args)
            return

        def fire() -> None:
            self.timers.pop(handle, None)
            deliver(*args)

        handle = self.loop.call_later(delay, fire)
        self.timers[handle] = args[1]

    def _write(self, transport: asyncio.Transport, data: bytes, key: StatsKey) -> None:
        if transport.is_closing():
            self.proxy.tally.dropped(key)
            return
        # Count first: whoever reads the counters after the frame arrived must see it.
        self.proxy.tally.delivered(key, len(data))
        transport.write(data)

    def close(self) -> None:
        """Abort both sides; frames still delayed or queued count as dropped."""
        if self.closed:
            return
        self.closed = True
        self.proxy.links.discard(self)
        self.connect_task.cancel()
        for handle, key in self.timers.items():
            handle.cancel()
            self.proxy.tally.dropped(key)
        self.timers.clear()
        for _, key in self.backlog:
            self.proxy.tally.dropped(key)
        self.backlog.clear()
        self.caller.abort()
        if self.server is not None:
            self.server.abort()


def _uniform(proxy: FaultProxy, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low if low == high else proxy.rng.uniform(low, high)


class CallerSide(asyncio.Protocol):
    """The accepted connection from a peer or a client."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.link: Link | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.link = Link(self.proxy, transport)

    def data_received(self, data: bytes) -> None:
        assert self.link is not None
        self.link.from_caller(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link.close()


class _ServerSide(asyncio.Protocol):
    """The proxy's connection to the server's private address."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link.from_server(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()
