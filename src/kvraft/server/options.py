"""Parsing and checking a server's settings; every user mistake becomes a one-line ValueError."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from kvraft.addresses import split_address
from kvraft.kv_protocol import DEFAULT_MAX_VALUE_BYTES
from kvraft.raft.config import (
    DEFAULT_ELECTION_TIMEOUT_TICKS,
    DEFAULT_HEARTBEAT_INTERVAL_TICKS,
    DEFAULT_TICK_INTERVAL_S,
)
from kvraft.rpc.admission import (
    DEFAULT_FRAME_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionLimits,
)
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES
from kvraft.rpc.peer_auth import check_secret
from kvraft.rpc.tls import ServerTls, TlsFiles, load_server_tls, peer_dial_context
from kvraft.rpc.tokens import TokenTable

DEFAULT_SNAPSHOT_THRESHOLD_BYTES = 64 * 1024 * 1024
# A leader's admission budget: entries submitted and not yet applied. Over it the
# leader answers Busy (kvraft.server.rsm); the defaults leave room for thousands of
# clients at once while bounding the log and memory that overload can pile up.
DEFAULT_MAX_INFLIGHT_PROPOSALS = 4096
DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024
# Read-index reads (read="index") a leader holds at once, waiting for their
# heartbeat round or their apply. Each costs a future and a few ints, and one
# round serves them all, so the bound is there for memory under a flood (a
# leader that can confirm nothing, e.g. cut off without check-quorum, would
# otherwise pile them up): over it the leader answers Busy.
DEFAULT_MAX_PENDING_READS = 4096
# The watch history (server/watch_history.py): revisions kept, and a byte bound
# on their events (keys, values and previous values), so memory stays bounded
# however large the values: 10,000 revisions of small writes are a few MiB.
DEFAULT_HISTORY_REVISIONS = 10_000
DEFAULT_HISTORY_BYTES = 64 * 1024 * 1024

# What a Raft message's frame holds besides its entries' commands or its
# snapshot chunk's bytes: the notify envelope ``[2, "raft", "p<id>", ...]``
# (about 15 bytes) and the message's fixed fields, each int at most 9 bytes
# in msgpack, with their extension and bin headers: under 150 bytes for any
# message. 512 leaves room for a longer sender or a field added later.
RAFT_ENVELOPE_BYTES = 512
# What one log entry adds beyond its command: an extension header (up to 6
# bytes), an array header, term and index (up to 9 bytes each) and the
# command's bin header (up to 5): about 30 bytes, counted as 64.
RAFT_ENTRY_OVERHEAD_BYTES = 64
# RaftConfig's default, kept for frames large enough to afford its overhead.
MAX_ENTRIES_PER_MESSAGE = 512


class RaftMessageLimits(NamedTuple):
    """Raft's batch and chunk sizes, derived from the frame limit so every message fits it."""

    max_entries_per_message: int
    max_bytes_per_message: int
    snapshot_chunk_bytes: int


def raft_message_limits(max_frame_bytes: int) -> RaftMessageLimits:
    """The largest batches and chunks whose frames stay within ``max_frame_bytes``.

    An AppendEntries of ``n <= max_entries`` entries whose commands total at
    most ``max_bytes`` takes at most ``RAFT_ENVELOPE_BYTES + n *
    RAFT_ENTRY_OVERHEAD_BYTES + max_bytes <= max_frame_bytes``; the entry
    count is capped so its overhead takes at most a quarter of the frame. An
    InstallSnapshot chunk takes the frame less the envelope. A single entry
    over ``max_bytes`` is still sent alone (``RaftLog.batch``), and fits:
    a command is at most its value plus its key, client id and ~60 bytes of
    fields, and ServerOptions keeps 4096 bytes of the frame beside the
    largest value. Without this a node with ``--max-frame-bytes`` 1 MiB sent
    1 MiB snapshot chunks that no frame could carry, and a lagging follower
    never caught up.
    """
    budget = max_frame_bytes - RAFT_ENVELOPE_BYTES
    if budget < 4 * RAFT_ENTRY_OVERHEAD_BYTES:
        raise ValueError(
            f"--max-frame-bytes {max_frame_bytes} leaves no room for Raft messages"
            f" (at least {RAFT_ENVELOPE_BYTES + 4 * RAFT_ENTRY_OVERHEAD_BYTES})"
        )
    max_entries = min(MAX_ENTRIES_PER_MESSAGE, budget // (4 * RAFT_ENTRY_OVERHEAD_BYTES))
    return RaftMessageLimits(
        max_entries_per_message=max_entries,
        max_bytes_per_message=budget - max_entries * RAFT_ENTRY_OVERHEAD_BYTES,
        snapshot_chunk_bytes=budget,
    )


def parse_peers(text: str) -> dict[int, str]:
    """``"0=host:port,1=host:port"`` -> ``{0: "host:port", 1: ...}``."""
    peers: dict[int, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        ident, sep, address = part.partition("=")
        ident = ident.strip()
        if not sep or not ident.isdigit():
            raise ValueError(f"--peers: expected ID=HOST:PORT, got {part!r}")
        peer_id = int(ident)
        if peer_id in peers:
            raise ValueError(f"--peers: peer id {peer_id} appears twice")
        address = address.strip()
        try:
            split_address(address)
        except ValueError as exc:
            raise ValueError(f"--peers: peer {peer_id}: {exc}") from None
        peers[peer_id] = address
    if not peers:
        raise ValueError("--peers: no peers given")
    return peers


@dataclass(frozen=True)
class ServerOptions:
    """Everything ``kvraft server`` needs to run one node.

    ``peer_secret`` (the contents of ``--peer-secret-file``, never shown in a
    repr) authenticates peers, and so do peer TLS certificates (``tls``); a
    node with neither refuses to be built unless ``insecure_peers`` says its
    network is trusted: peer authentication is on by default. ``tokens``
    (from ``--auth-token-file``) makes clients present a token.
    """

    node_id: int
    listen: str
    peers: dict[int, str]
    data_dir: Path
    cluster_id: str = "kvraft"
    test_hooks: bool = False
    snapshot_threshold_bytes: int | None = DEFAULT_SNAPSHOT_THRESHOLD_BYTES
    # "fork": encode snapshots in a forked child (kvraft.server.forked_encoder);
    # "thread": in a thread beside the event loop (the GIL is shared).
    snapshot_encoder: str = "fork"
    tick_interval_s: float = DEFAULT_TICK_INTERVAL_S
    election_timeout_ticks: int = DEFAULT_ELECTION_TIMEOUT_TICKS
    heartbeat_interval_ticks: int = DEFAULT_HEARTBEAT_INTERVAL_TICKS
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    op_timeout_s: float = 2.0
    max_inflight_proposals: int = DEFAULT_MAX_INFLIGHT_PROPOSALS
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    max_pending_reads: int = DEFAULT_MAX_PENDING_READS
    history_revisions: int = DEFAULT_HISTORY_REVISIONS
    history_bytes: int = DEFAULT_HISTORY_BYTES
    peer_secret: bytes | None = field(default=None, repr=False)
    insecure_peers: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S
    tls: TlsFiles = field(default_factory=TlsFiles)
    tokens: TokenTable | None = None
    # --metrics-listen HOST:PORT: /metrics and /health over HTTP (None: off).
    metrics_listen: str | None = None
    # --initial-cluster-state existing: join a running cluster (after `kvraft
    # member add`) instead of seeding a new one from --peers, which then only
    # says how to reach members (docs/membership.md).
    join_existing: bool = False
    # A learner is promoted only within this many entries of the leader.
    max_promotion_lag_entries: int = 1000

    @property
    def limits(self) -> ConnectionLimits:
        return ConnectionLimits(self.max_connections, self.idle_timeout_s, self.frame_timeout_s)

    def server_tls(self) -> ServerTls | None:
        """The port's TLS, loaded from its files; ValueError naming a bad flag."""
        return load_server_tls(self.tls, has_peer_secret=self.peer_secret is not None)

    def peer_dial(self) -> tuple[ssl.SSLContext, str] | None:
        """The context and server name this node dials its peers with (None: plaintext)."""
        return peer_dial_context(self.tls)

    def __post_init__(self) -> None:
        _ = self.limits  # a bad bound is a ValueError now, not when serving
        self.server_tls()  # unreadable certificates: a ValueError now, not at the first client
        self.peer_dial()
        if self.node_id not in self.peers and not self.join_existing:
            ids = ",".join(str(i) for i in sorted(self.peers))
            raise ValueError(f"--id {self.node_id} is not one of the ids in --peers ({ids})")
        try:
            split_address(self.listen)
        except ValueError as exc:
            raise ValueError(f"--listen: {exc}") from None
        if self.metrics_listen is not None:
            try:
                split_address(self.metrics_listen)
            except ValueError as exc:
                raise ValueError(f"--metrics-listen: {exc}") from None
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ValueError(f"--data-dir: {self.data_dir} exists and is not a directory")
        if self.max_value_bytes + 4096 > self.max_frame_bytes:
            raise ValueError(
                f"--max-value-bytes {self.max_value_bytes} must leave 4096 bytes of room"
                f" in a frame (--max-frame-bytes {self.max_frame_bytes})"
            )
        raft_message_limits(self.max_frame_bytes)  # a frame too small for Raft: ValueError
        if self.heartbeat_interval_ticks >= self.election_timeout_ticks:
            # Followers would time out between heartbeats: elections without end.
            raise ValueError(
                f"--heartbeat-ticks {self.heartbeat_interval_ticks} must be less than"
                f" --election-ticks {self.election_timeout_ticks}"
            )
        if self.max_inflight_proposals < 1:
            raise ValueError("--max-inflight-proposals must be at least 1")
        if self.max_pending_reads < 1:
            raise ValueError("max_pending_reads must be at least 1")
        if self.max_inflight_bytes < self.max_value_bytes + 4096:
            # Else the largest put allowed could never be admitted.
            raise ValueError("--max-inflight-bytes must hold the largest put (--max-value-bytes)")
        if self.history_revisions < 1 or self.history_bytes < 1:
            raise ValueError("--history-revisions and --history-bytes must be at least 1")
        if self.peer_secret is None and not self.insecure_peers and not self.tls.peer_tls:
            raise ValueError(
                "no peer authentication: give --peer-secret-file FILE or the --peer-* TLS"
                " flags (or --insecure-peers, only on a network where every process is trusted)"
            )
        if self.insecure_peers and (self.peer_secret is not None or self.tls.peer_tls):
            raise ValueError(
                "--insecure-peers excludes --peer-secret-file and the --peer-* TLS flags"
            )
        if self.peer_secret is not None:
            try:
                check_secret(self.peer_secret)
            except ValueError as exc:
                raise ValueError(f"--peer-secret-file: {exc}") from None
