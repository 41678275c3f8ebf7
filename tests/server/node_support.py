"""What the RaftNode tests pass a node instead of the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvraft.raft.messages import Message


class RecordingTransport:
    """A PeerTransport that delivers nothing and remembers every message it was given."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed = False

    def send(self, message: Message) -> bool:
        self.sent.append(message)
        return True

    def close(self) -> None:
        self.closed = True


def single_node_options(data_dir: Path) -> dict[str, Any]:
    """The fewest ServerOptions arguments that make a valid one-node server, to vary in tests."""
    return dict(
        node_id=0,
        listen="127.0.0.1:1",
        peers={0: "127.0.0.1:1"},
        data_dir=data_dir,
        peer_secret=b"s" * 32,
    )
