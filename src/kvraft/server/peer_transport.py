"""Raft messages over the RPC layer: the PeerTransport a server process gives its node.

Each peer gets one :class:`~kvraft.rpc.client.RpcClient` that identifies as
this node (sender ``p<id>``) and carries Raft messages as one-way
notifications of method :data:`RAFT_METHOD`; the receiving server's service
hands them to its node. A peer that is down costs a dropped message, never a
blocked Ready loop: the client reconnects in the background and Raft resends.
Every member is dialed as soon as it is one, and redialed whenever its
connection drops (``RpcClient.keep_connected``), not at the first message
for it: a candidate's one vote request per election would be that message.

Given the cluster's :class:`~kvraft.rpc.peer_auth.PeerKey`, every connection
first proves it is this node (the peer handshake); without one (a cluster
run with ``--insecure-peers``) the receiving side believes the sender field.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping

from kvraft.raft.messages import AppendEntries, InstallSnapshot, Message
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import peer_sender
from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES
from kvraft.rpc.peer_auth import PeerKey

RAFT_METHOD = "raft"

log = logging.getLogger("kvraft.node")


class RpcPeerTransport:
    """One RPC connection per peer of ``node_id`` (itself excluded).

    ``max_frame_bytes`` is the node's own ``--max-frame-bytes``: every member
    of a cluster is run with the same, so what we send fits what peers read.
    ``peer_key`` (None only with ``--insecure-peers``) proves to each peer, on
    every connection, that this node holds the cluster's secret (or names the
    member its peer certificate vouches for). ``dial``: the TLS context and
    server name peers' ports are dialed with, None for plaintext.
    """

    def __init__(
        self,
        node_id: int,
        peer_addresses: Mapping[int, str],
        peer_key: PeerKey | None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        dial: tuple[ssl.SSLContext, str] | None = None,
    ) -> None:
        self.node_id = node_id
        context, server_name = dial if dial is not None else (None, None)
        self.dropped = 0  # messages that could not be encoded or were over the frame limit
        # The last message dropped per peer (type, index): Raft resends it every
        # heartbeat, so only the first drop of each is an ERROR line, the rest DEBUG.
        self._last_dropped: dict[int, tuple[str, int | None]] = {}
        self._overrides = {pid: a for pid, a in peer_addresses.items() if pid != node_id}

        def client(pid: int, address: str) -> RpcClient:
            return RpcClient(
                address,
                peer_sender(node_id),
                max_frame_bytes=max_frame_bytes,
                peer_key=peer_key,
                server_peer_id=pid if peer_key is not None else None,
                ssl=context,
                server_hostname=server_name,
            )

        self._client = client
        self._peers: dict[int, RpcClient] = {
            pid: client(pid, address) for pid, address in self._overrides.items()
        }

    def set_members(self, members: Mapping[int, str]) -> None:
        """Connect to every node of ``members`` (id -> the address it advertises, maybe "");
        stop dialing those no longer in it.

        A member is dialed at this node's own address for it (``--peers``: an
        override, e.g. through a proxy), else at the address the configuration
        says it advertises. Connections to ``--peers`` entries are kept
        whatever the configuration says (they may be members we have not
        learned of yet); those made from advertised addresses go with the member.
        """
        for pid in sorted(members.keys() - {self.node_id}):
            address = self._overrides.get(pid) or members[pid]
            client = self._peers.get(pid)
            if client is None and address:
                self._peers[pid] = self._client(pid, address)
                log.info("n%d dialing new member n%d at %s", self.node_id, pid, address)
        for pid in list(self._peers):
            if pid not in members and pid not in self._overrides:
                self._peers.pop(pid).close()
                log.info("n%d stopped dialing n%d: no longer a member", self.node_id, pid)
            else:  # a --peers entry that is no member is dialed only to send to it
                self._peers[pid].keep_connected(pid in members)

    def send(self, message: Message) -> bool:
        """Send ``message`` if its peer is connected; False if dropped. Never raises.

        A message that cannot be encoded or is over the frame limit (the
        batch limits are derived to prevent it, so this is a bug or a raw
        test-hook command) is logged and dropped like a lost one: an
        exception here would stop the Ready loop, and Raft resends.
        """
        client = self._peers.get(message.dst)
        if client is None:
            return False
        try:
            return client.notify(RAFT_METHOD, message)
        except (ValueError, TypeError, OverflowError) as exc:
            self.dropped += 1
            index = (
                message.prev_log_index
                if isinstance(message, AppendEntries)
                else message.last_included_index
                if isinstance(message, InstallSnapshot)
                else None
            )
            what = (type(message).__name__, index)
            repeated = self._last_dropped.get(message.dst) == what
            self._last_dropped[message.dst] = what
            log.log(
                logging.DEBUG if repeated else logging.ERROR,
                "n%d [term %d] dropped a %s to n%d at index %s: %s",
                self.node_id,
                message.term,
                type(message).__name__,
                message.dst,
                index,
                exc,
            )
            return False

    @property
    def clients(self) -> Mapping[int, RpcClient]:
        """Peer id -> its RPC client (read by the server's metrics for bytes sent)."""
        return self._peers

    def close(self) -> None:
        for client in self._peers.values():
            client.close()
