"""Parsing and checking a server's settings; every user mistake becomes a one-line ValueError."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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

DEFAULT_SNAPSHOT_THRESHOLD_BYTES = 64 * 1024 * 1024


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
    repr) authenticates peers; a node without one refuses to be built unless
    ``insecure_peers`` says its network is trusted: peer authentication is on
    by default.
    """

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
    peer_secret: bytes | None = field(default=None, repr=False)
    insecure_peers: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S

    @property
    def limits(self) -> ConnectionLimits:
        return ConnectionLimits(self.max_connections, self.idle_timeout_s, self.frame_timeout_s)

    def __post_init__(self) -> None:
        _ = self.limits  # a bad bound is a ValueError now, not when serving
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
        if self.peer_secret is None and not self.insecure_peers:
            raise ValueError(
                "no peer secret: give --peer-secret-file FILE "
                "(or --insecure-peers, only on a network where every process is trusted)"
            )
        if self.peer_secret is not None and self.insecure_peers:
            raise ValueError("--peer-secret-file and --insecure-peers exclude each other")
        if self.peer_secret is not None:
            try:
                check_secret(self.peer_secret)
            except ValueError as exc:
                raise ValueError(f"--peer-secret-file: {exc}") from None
