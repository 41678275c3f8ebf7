"""Network fault state and traffic counters shared by the proxies of one cluster.

No sockets and no asyncio here: :class:`NetworkControl` is the one object that
says whether a message between a sender and a server may pass right now, and
with which random drop and delay rates (a :class:`NetworkProfile`). Every proxy
of a cluster consults the same control object, so ``disconnect(i)`` on it is
seen both by proxy ``i`` (traffic *to* ``i``) and by every other proxy (traffic
*from* ``i``).

Thread safety: tests change faults from their own thread while proxies read
them on the proxy event loop. The fault state is an immutable snapshot swapped
under a lock on every change, so a proxy reads it with one attribute load and
never sees a half-made partition.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from kvraft.rpc.codec import client_sender, sender_peer_id

#: What a counted frame was: a request (expects a reply), a one-way notify, a
#: reply travelling back to the caller, or ``other`` (anything that is not a
#: valid envelope of the kind expected in its direction; forwarded untouched so
#: the server, not the proxy, judges bad input).
Kind = Literal["request", "notify", "reply", "handshake", "other"]


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_range(name: str, value: tuple[float, float]) -> None:
    low, high = value
    if not 0.0 <= low <= high:
        raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {value!r}")


@dataclass(frozen=True)
class NetworkProfile:
    """Random drop and delay rates of an unreliable network; every field is a parameter.

    Requests and notifies travel caller -> server; replies travel back. Each
    message is decided independently when the proxy receives it: first dropped
    with the drop probability of its direction, otherwise delayed by a uniform
    draw from its delay range; a reply that survives is further *held back*
    with probability ``reply_hold`` by a uniform draw from ``reply_hold_s``,
    which is what makes replies overtake one another.

    Raft replies in kvraft are notifies of their own (see ``rpc/codec.py``), so
    a notify whose argument is a typed message with a tag in ``reply_tags`` is
    treated as a reply (reply drop, delay and hold rates). Empty by default.

    Delays are lower bounds: a timer fires at or after its time, and epoll's
    millisecond granularity plus thread scheduling add up to about a
    millisecond per hop (measured: a 1-5 ms each-way profile gives 4-14 ms
    round trips on a loaded machine, median 7.5 ms against the ideal 6).
    """

    name: str
    request_drop: float = 0.0
    reply_drop: float = 0.0
    request_delay_s: tuple[float, float] = (0.0, 0.0)
    reply_delay_s: tuple[float, float] = (0.0, 0.0)
    reply_hold: float = 0.0
    reply_hold_s: tuple[float, float] = (0.0, 0.0)
    reply_tags: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        _check_probability("request_drop", self.request_drop)
        _check_probability("reply_drop", self.reply_drop)
        _check_probability("reply_hold", self.reply_hold)
        _check_range("request_delay_s", self.request_delay_s)
        _check_range("reply_delay_s", self.reply_delay_s)
        _check_range("reply_hold_s", self.reply_hold_s)

    @property
    def is_reliable(self) -> bool:
        """Whether this profile never drops nor delays anything."""
        return (
            self.request_drop == self.reply_drop == self.reply_hold == 0.0
            and self.request_delay_s[1] == self.reply_delay_s[1] == 0.0
        )


#: Everything delivered at once.
RELIABLE = NetworkProfile("reliable")

#: Half of the requests never reach the server; half of the rest lose their
#: reply after the server handled them (so a caller sees 25% of its calls
#: answered and cannot tell which of the others ran); 1-5 ms each way.
LOSSY = NetworkProfile(
    "lossy",
    request_drop=0.5,
    reply_drop=0.5,
    request_delay_s=(0.001, 0.005),
    reply_delay_s=(0.001, 0.005),
)

#: 10% of requests and 10% of replies lost, 0-27 ms each way, and two thirds of
#: the surviving replies held back 200-2200 ms, so replies arrive long after
#: later ones (stale replies, the classic "unreliable + long reordering" net).
REORDERING = NetworkProfile(
    "reordering",
    request_drop=0.1,
    reply_drop=0.1,
    request_delay_s=(0.0, 0.027),
    reply_delay_s=(0.0, 0.027),
    reply_hold=2 / 3,
    reply_hold_s=(0.2, 2.2),
)

PROFILES: Mapping[str, NetworkProfile] = {p.name: p for p in (RELIABLE, LOSSY, REORDERING)}


def network_profile(spec: str | NetworkProfile) -> NetworkProfile:
    """The profile named ``spec`` (``reliable``, ``lossy``, ``reordering``), or ``spec`` itself."""
    if isinstance(spec, NetworkProfile):
        return spec
    try:
        return PROFILES[spec]
    except KeyError:
        raise ValueError(
            f"unknown network profile {spec!r}; known: {', '.join(sorted(PROFILES))}"
            " (or pass a NetworkProfile)"
        ) from None


# ----------------------------------------------------------------- fault state


@dataclass(frozen=True)
class FaultState:
    """One immutable snapshot of every fault rule; swapped whole on each change."""

    profile: NetworkProfile = RELIABLE
    disconnected: frozenset[int] = frozenset()
    # peer id -> group index; None when there is no partition.
    groups: Mapping[int, int] | None = None
    # (server id, client sender identity) pairs that cannot talk.
    blocked: frozenset[tuple[int, str]] = frozenset()
    # (server id, client sender identity, method) -> seconds: the next such
    # request is held that long in transit, then delivered (one use each).
    holds: Mapping[tuple[int, str, str], float] = field(default_factory=dict)

    def link_up(self, server_id: int, sender: str | None) -> bool:
        """Whether frames between ``sender`` and server ``server_id`` pass (either way).

        Disconnection cuts a server off from everyone; a partition cuts peers
        in different groups apart (a peer in no group is alone) and leaves
        clients alone; a block cuts one client off from one server. A sender
        not yet known (no request seen on the connection) is only subject to
        disconnection of the server.
        """
        if server_id in self.disconnected:
            return False
        if sender is None:
            return True
        peer = sender_peer_id(sender)
        if peer is not None:
            if peer in self.disconnected:
                return False
            groups = self.groups
            if groups is not None and peer != server_id:
                mine = groups.get(server_id)
                return mine is not None and groups.get(peer) == mine
            return True
        return (server_id, sender) not in self.blocked


class NetworkControl:
    """The fault switches of one cluster's network; every method is thread-safe.

    Server ids are the Raft peer ids. Changes apply to messages the proxies
    receive from then on *and* to messages already delayed in a proxy: a
    message is checked again when its delay ends, as a packet in flight on a
    cut link is lost.
    """

    def __init__(
        self, profile: str | NetworkProfile = RELIABLE, *, seed: int | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._state = FaultState(profile=network_profile(profile))
        self.seed = random.randrange(2**32) if seed is None else seed
        self._tallies: dict[int, Tally] = {}

    @property
    def state(self) -> FaultState:
        """The current snapshot (a proxy reads this once per message)."""
        return self._state

    def _update(self, **changes: object) -> None:
        with self._lock:
            self._state = dataclasses.replace(self._state, **changes)  # type: ignore[arg-type]

    # -- random rates

    @property
    def profile(self) -> NetworkProfile:
        return self._state.profile

    def set_profile(self, profile: str | NetworkProfile) -> None:
        """Switch every proxy to another profile (e.g. ``reliable`` for a liveness phase)."""
        self._update(profile=network_profile(profile))

    def rng(self, server_id: int) -> random.Random:
        """The random source for proxy ``server_id``: reproducible from :attr:`seed`."""
        return random.Random(f"{self.seed}/{server_id}")

    # -- disconnection

    def disconnect(self, server_id: int) -> None:
        """Lose all traffic to and from server ``server_id``, peers' and clients' alike."""
        with self._lock:
            self._state = dataclasses.replace(
                self._state, disconnected=self._state.disconnected | {server_id}
            )

    def reconnect(self, server_id: int) -> None:
        """Undo :meth:`disconnect` (a no-op for a connected server)."""
        with self._lock:
            self._state = dataclasses.replace(
                self._state, disconnected=self._state.disconnected - {server_id}
            )

    # -- partitions

    def partition(self, *groups: Iterable[int]) -> None:
        """Deliver peer messages only within a group; a peer in no group is alone.

        Replaces any earlier partition. Clients are not peers and are not
        affected (see :meth:`block_client`). ValueError if a peer is in two groups.
        """
        mapping: dict[int, int] = {}
        for index, group in enumerate(groups):
            for peer in group:
                if peer in mapping:
                    raise ValueError(f"peer {peer} is in more than one partition group")
                mapping[peer] = index
        self._update(groups=mapping)

    def heal(self) -> None:
        """End the partition: every peer hears every other (disconnections stay)."""
        self._update(groups=None)

    # -- clients

    def block_client(self, server_id: int, client_id: str) -> None:
        """Server ``server_id`` stops hearing from (and answering) client ``client_id``.

        ``client_id`` is the id a client puts in its sender identity
        (``client_sender(client_id)``, i.e. the sender string without its ``c``).
        """
        with self._lock:
            self._state = dataclasses.replace(
                self._state,
                blocked=self._state.blocked | {(server_id, client_sender(client_id))},
            )

    def unblock_client(self, server_id: int, client_id: str) -> None:
        """Undo :meth:`block_client`."""
        with self._lock:
            self._state = dataclasses.replace(
                self._state,
                blocked=self._state.blocked - {(server_id, client_sender(client_id))},
            )

    def hold_next_request(
        self, server_id: int, client_id: str, method: str, seconds: float
    ) -> None:
        """Hold the next ``method`` request of client ``client_id`` to server ``server_id``.

        That one request waits ``seconds`` in the proxy, then is delivered on
        its connection (if the link is still up and the connection open), as a
        segment retransmitted after a partition heals; requests after it pass
        at once. It is how a test shows that a copy arriving after its client
        has retried and moved on changes nothing. Replaces an unused hold of
        the same request; :meth:`clear` cancels holds not yet taken.
        """
        if not seconds > 0:
            raise ValueError(f"a hold lasts a positive number of seconds, not {seconds!r}")
        key = (server_id, client_sender(client_id), method)
        with self._lock:
            holds = {**self._state.holds, key: seconds}
            self._state = dataclasses.replace(self._state, holds=holds)

    def take_hold(self, server_id: int, sender: str, method: str) -> float:
        """Seconds to hold this request (0: none), using up its hold (proxies call this)."""
        key = (server_id, sender, method)
        with self._lock:
            holds = dict(self._state.holds)
            seconds = holds.pop(key, 0.0)
            if seconds:
                self._state = dataclasses.replace(self._state, holds=holds)
            return seconds

    def clear(self) -> None:
        """Reconnect everything, heal, unblock all clients, drop unused holds; the profile stays."""
        self._update(disconnected=frozenset(), groups=None, blocked=frozenset(), holds={})

    # -- counters

    def tally(self, server_id: int) -> Tally:
        """The counters of the proxy in front of ``server_id`` (made on first use)."""
        with self._lock:
            tally = self._tallies.get(server_id)
            if tally is None:
                tally = self._tallies[server_id] = Tally()
            return tally

    def stats(self, server_id: int | None = None) -> TrafficStats:
        """Counters of one proxy, or of the whole network (each frame crosses one proxy)."""
        with self._lock:
            tallies = dict(self._tallies)
        if server_id is not None:
            tally = tallies.get(server_id)
            return tally.snapshot() if tally is not None else TrafficStats({})
        return TrafficStats.sum(t.snapshot() for t in tallies.values())

    def reset_stats(self) -> None:
        """Zero every proxy's counters.

        Frames in flight at the reset are counted as delivered or dropped when
        their delay ends without having been counted as seen: reset while the
        network is quiet when exact ``seen == dropped + delivered`` matters.
        """
        with self._lock:
            tallies = list(self._tallies.values())
        for tally in tallies:
            tally.reset()


# -------------------------------------------------------------------- counters


@dataclass
class Counts:
    """Frame counts for one slice of traffic.

    Invariant, once nothing is in flight: ``seen == dropped + delivered``.
    ``held`` counts frames held back (a subset of those seen: replies at the
    profile's ``reply_hold`` rate, requests by a hold rule); byte counts
    include the 4-byte frame header.
    """

    seen: int = 0
    dropped: int = 0
    delivered: int = 0
    held: int = 0
    bytes_seen: int = 0
    bytes_delivered: int = 0

    def __add__(self, other: Counts) -> Counts:
        mine, theirs = dataclasses.astuple(self), dataclasses.astuple(other)
        return Counts(*(a + b for a, b in zip(mine, theirs, strict=True)))

    @property
    def in_flight(self) -> int:
        """Frames received and still waiting out a delay."""
        return self.seen - self.dropped - self.delivered


#: Counters are kept per (kind, method, sender). A reply is counted under the
#: method of its request and the sender of that request (whom it goes back to).
StatsKey = tuple[Kind, str, str]


@dataclass(frozen=True)
class TrafficStats:
    """An immutable snapshot of counters, sliced by kind, method and sender."""

    counts: Mapping[StatsKey, Counts] = field(default_factory=dict)

    @staticmethod
    def sum(parts: Iterable[TrafficStats]) -> TrafficStats:
        merged: dict[StatsKey, Counts] = {}
        for part in parts:
            for key, counts in part.counts.items():
                merged[key] = merged.get(key, Counts()) + counts
        return TrafficStats(merged)

    def __add__(self, other: TrafficStats) -> TrafficStats:
        return TrafficStats.sum((self, other))

    def select(
        self,
        kind: Kind | None = None,
        *,
        method: str | None = None,
        sender: str | None = None,
        peers_only: bool = False,
    ) -> TrafficStats:
        """The slice matching every given filter (``peers_only``: Raft peer senders)."""
        return TrafficStats(
            {
                key: counts
                for key, counts in self.counts.items()
                if (kind is None or key[0] == kind)
                and (method is None or key[1] == method)
                and (sender is None or key[2] == sender)
                and (not peers_only or sender_peer_id(key[2]) is not None)
            }
        )

    def total(
        self,
        kind: Kind | None = None,
        *,
        method: str | None = None,
        sender: str | None = None,
        peers_only: bool = False,
    ) -> Counts:
        """The sum of :meth:`select` with the same filters."""
        out = Counts()
        for counts in self.select(
            kind, method=method, sender=sender, peers_only=peers_only
        ).counts.values():
            out = out + counts
        return out

    def by_method(self) -> dict[str, Counts]:
        return self._by(1)

    def by_sender(self) -> dict[str, Counts]:
        return self._by(2)

    def _by(self, position: int) -> dict[str, Counts]:
        out: dict[str, Counts] = {}
        for key, counts in self.counts.items():
            out[key[position]] = out.get(key[position], Counts()) + counts
        return out

    def __iter__(self) -> Iterator[tuple[StatsKey, Counts]]:
        return iter(sorted(self.counts.items()))


class Tally:
    """The live counters of one proxy: written on the proxy loop, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[StatsKey, Counts] = {}

    def _get(self, key: StatsKey) -> Counts:
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = Counts()
        return counts

    def seen(self, key: StatsKey, nbytes: int) -> None:
        with self._lock:
            counts = self._get(key)
            counts.seen += 1
            counts.bytes_seen += nbytes

    def dropped(self, key: StatsKey) -> None:
        with self._lock:
            self._get(key).dropped += 1

    def held(self, key: StatsKey) -> None:
        with self._lock:
            self._get(key).held += 1

    def delivered(self, key: StatsKey, nbytes: int) -> None:
        with self._lock:
            counts = self._get(key)
            counts.delivered += 1
            counts.bytes_delivered += nbytes

    def snapshot(self) -> TrafficStats:
        with self._lock:
            return TrafficStats({k: dataclasses.replace(c) for k, c in self._counts.items()})

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
