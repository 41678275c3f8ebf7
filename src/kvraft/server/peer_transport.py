"""Raft messages over the RPC layer: the PeerTransport a server process gives its node.

Each peer gets one :class:`~kvraft.rpc.client.RpcClient` that identifies as
this node (sender ``p<id>``) and carries Raft messages as one-way
notifications of method :data:`RAFT_METHOD`; the receiving server's service
hands them to its node. A peer that is down costs a dropped message, never a
blocked Ready loop: the client reconnects in the background and Raft resends.

Given the cluster's :class:`~kvraft.rpc.peer_auth.PeerKey`, every connection
first proves it is this node (the peer handshake); without one (a cluster
run with ``--insecure-peers``) the receiving side believes the sender field.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvraft.raft.messages import Message
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import peer_sender
from kvraft.rpc.peer_auth import PeerKey

RAFT_METHOD = "raft"


class RpcPeerTransport:
    """One RPC connection per peer of ``node_id`` (itself excluded)."""

    def __init__(
        self, node_id: int, peer_addresses: Mapping[int, str], peer_key: PeerKey | None
    ) -> None:
        self.node_id = node_id
        self._peers: dict[int, RpcClient] = {
            pid: RpcClient(
                address,
                peer_sender(node_id),
                peer_key=peer_key,
                server_peer_id=pid if peer_key is not None else None,
            )
            for pid, address in peer_addresses.items()
            if pid != node_id
        }

    def send(self, message: Message) -> bool:
        client = self._peers.get(message.dst)
        return client is not None and client.notify(RAFT_METHOD, message)

    def close(self) -> None:
        for client in self._peers.values():
            client.close()
