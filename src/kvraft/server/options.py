"""Parsing and checking a server's settings; every user mistake becomes a one-line ValueError."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvraft.addresses import split_address
from kvraft.kv_protocol import DEFAULT_MAX_VALUE_BYTES
from kvraft.raft.config import (
    DEFAULT_ELECTION_TIMEOUT_TICKS,
    DEFAULT_HEARTBEAT_INTERVAL_TICKS,
    DEFAULT_TICK_INTERVAL_S,
)
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES

DEFAULT_SNAPSHOT_THRESHOLD_BYTES = 64 * 1024 * 1024
# A leader's admission budget: entries submitted and not yet applied. Over it the
# leader answers Busy (kvraft.server.rsm); the defaults leave room for thousands of
# clients at once while bounding the log and memory that overload can pile up.
DEFAULT_MAX_INFLIGHT_PROPOSALS = 4096
DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024


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
    """Everything ``kvraft server`` needs to run one node."""

    node_id: int
    listen: str
    peers: dict[int, str]
    data_dir: Path
    cluster_id: str = "kvraft"
    test_hooks: bool = False
    snapshot_threshold_bytes: int | None = DEFAULT_SNAPSHOT_THRESHOLD_BYTES
    tick_interval_s: float = DEFAULT_TICK_INTERVAL_S
    election_timeout_ticks: int = DEFAULT_ELECTION_TIMEOUT_TICKS
    heartbeat_interval_ticks: int = DEFAULT_HEARTBEAT_INTERVAL_TICKS
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    op_timeout_s: float = 2.0
    max_inflight_proposals: int = DEFAULT_MAX_INFLIGHT_PROPOSALS
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            ids = ",".join(str(i) for i in sorted(self.peers))
            raise ValueError(f"--id {self.node_id} is not one of the ids in --peers ({ids})")
        try:
            split_address(self.listen)
        except ValueError as exc:
            raise ValueError(f"--listen: {exc}") from None
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ValueError(f"--data-dir: {self.data_dir} exists and is not a directory")
        if self.max_value_bytes + 4096 > self.max_frame_bytes:
            raise ValueError("--max-value-bytes must leave room in a frame (--max-frame-bytes)")
        if self.max_inflight_proposals < 1:
            raise ValueError("--max-inflight-proposals must be at least 1")
        if self.max_inflight_bytes < self.max_value_bytes + 4096:
            # Else the largest put allowed could never be admitted.
            raise ValueError("--max-inflight-bytes must hold the largest put (--max-value-bytes)")
