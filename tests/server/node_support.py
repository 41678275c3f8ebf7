"""What the RaftNode tests pass a node instead of the network."""

from __future__ import annotations

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
