"""Peer authentication: the challenge-response that makes a connection a Raft peer. Pure, no I/O.

Why: a frame's ``sender`` is the sender's choice, so anyone who can open a
TCP connection could speak as peer ``p1`` and forge votes or acknowledgements.
A connection carries Raft traffic only after it proved, at connection time,
that it holds the cluster's secret and is the peer it claims (the model is
MongoDB's keyFile internal authentication).

The handshake is four frames of the ordinary framing, envelope kind
``HANDSHAKE`` (``[3, step, sender, args]``, see :mod:`kvraft.rpc.codec`), sent
before anything else on the connection:

1. initiator -> responder ``hello``: ``(VERSION, cluster_id, initiator_id,
   responder_id, nonce_i)``;
2. responder -> initiator ``challenge``: ``(nonce_r, mac_r)``;
3. initiator -> responder ``proof``: ``mac_i`` (after checking ``mac_r``);
4. responder -> initiator ``welcome``: ``None``; the connection now speaks
   for ``initiator_id``.

``mac_x = HMAC-SHA256(secret, transcript(role_x, cluster_id, initiator_id,
responder_id, nonce_i, nonce_r))``, each field length-prefixed so no two
transcripts share bytes. Both nonces are 32 fresh random bytes per
connection, so a recorded handshake does not verify against a new
responder nonce (no replay); the role is in the transcript, so a responder's
MAC handed back as a proof is useless (no reflection); the claimed and
the addressed ids and the cluster id are in it, so a proof for one identity,
node or cluster proves nothing for another. MACs are compared with
:func:`hmac.compare_digest`. Both sides prove the secret (mutual).

What it does not give (docs/security.md): the frames after the handshake are
neither encrypted nor integrity-protected, so an attacker on the path can
read or alter them (peer TLS is the answer); and every holder of the one
secret can claim any member's id.
"""

from __future__ import annotations

import hmac
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from kvraft.errors import ProtocolError

VERSION = 1
NONCE_BYTES = 32
MAC_BYTES = 32
# Shorter secrets are refused: a secret that can be guessed proves nothing.
MIN_SECRET_BYTES = 16

HELLO, CHALLENGE, PROOF, WELCOME = "hello", "challenge", "proof", "welcome"
_DOMAIN = b"kvraft-peer-auth-v1"
_INITIATOR, _RESPONDER = b"initiator->responder", b"responder->initiator"
_LENGTH = struct.Struct(">I")


class AuthError(ProtocolError):
    """A handshake that did not prove what it claims: the remote side's fault."""


def check_secret(data: bytes) -> bytes:
    """The secret in a secret file's contents: stripped, at least MIN_SECRET_BYTES long.

    ValueError (a user's mistake) otherwise; the message never shows the secret.
    """
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the peer secret is {len(secret)} bytes long; it needs at least {MIN_SECRET_BYTES}"
        )
    return secret


def new_secret() -> bytes:
    """A fresh random secret, printable (it goes in a file a user may copy)."""
    return secrets.token_hex(32).encode()


@dataclass(frozen=True)
class PeerKey:
    """What a member holds: the cluster's secret and the cluster's id.

    ``secret`` is kept out of ``repr`` so that a logged object never shows it.
    ``secret=None`` is a member vouched for by peer TLS instead (its
    certificate, :mod:`kvraft.rpc.tls`): its handshake is ``hello`` then
    ``welcome``, no MACs, and both ends refuse it on a connection that is
    not mutual TLS with a peer certificate.
    """

    secret: bytes | None = field(repr=False)
    cluster_id: str

    def __post_init__(self) -> None:
        if self.secret is not None:
            check_secret(self.secret)

    @property
    def tls_vouched(self) -> bool:
        return self.secret is None


def transcript(
    role: bytes,
    cluster_id: str,
    initiator_id: int,
    responder_id: int,
    nonce_i: bytes,
    nonce_r: bytes,
) -> bytes:
    """The bytes a MAC covers; every field length-prefixed, so the encoding is injective."""
    parts = [_DOMAIN, role, cluster_id.encode(), b"%d" % initiator_id, b"%d" % responder_id]
    parts += [nonce_i, nonce_r]
    return b"".join(_LENGTH.pack(len(p)) + p for p in parts)


def mac(
    key: PeerKey, role: bytes, initiator_id: int, responder_id: int, nonces: tuple[bytes, bytes]
) -> bytes:
    """HMAC-SHA256 of the transcript under the cluster's secret."""
    assert key.secret is not None, "a TLS-vouched key has no MACs"
    data = transcript(role, key.cluster_id, initiator_id, responder_id, *nonces)
    return hmac.new(key.secret, data, "sha256").digest()


def _is_nonce(value: Any) -> bool:
    return type(value) is bytes and len(value) == NONCE_BYTES


def _is_mac(value: Any) -> bool:
    return type(value) is bytes and len(value) == MAC_BYTES


class Initiator:
    """The connecting side (a node's RPC client to a peer): one per connection attempt."""

    def __init__(
        self, key: PeerKey, my_id: int, responder_id: int, *, nonce: bytes | None = None
    ) -> None:
        self.key = key
        self.my_id = my_id
        self.responder_id = responder_id
        self.nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
        assert _is_nonce(self.nonce), "a nonce is NONCE_BYTES bytes"

    def hello(self) -> tuple[int, str, int, int, bytes]:
        """The args of the ``hello`` frame."""
        return (VERSION, self.key.cluster_id, self.my_id, self.responder_id, self.nonce)

    def proof(self, challenge: Any) -> bytes:
        """Check the responder's ``challenge`` args; the ``proof`` frame's args.

        AuthError if the responder did not prove the secret (a wrong secret,
        another cluster or node, or a reflected or replayed MAC).
        """
        if not (isinstance(challenge, tuple) and len(challenge) == 2):
            raise AuthError("malformed challenge")
        nonce_r, mac_r = challenge
        if not (_is_nonce(nonce_r) and _is_mac(mac_r)):
            raise AuthError("malformed challenge")
        if nonce_r == self.nonce:
            raise AuthError("the responder echoed our nonce")
        nonces = (self.nonce, nonce_r)
        expected = mac(self.key, _RESPONDER, self.my_id, self.responder_id, nonces)
        if not hmac.compare_digest(expected, mac_r):
            raise AuthError(f"n{self.responder_id} did not prove the cluster's secret")
        return mac(self.key, _INITIATOR, self.my_id, self.responder_id, nonces)


class Responder:
    """The accepting side (a node's RPC server): one per connection.

    ``peer_ids`` are the members that may connect (this node excluded).
    """

    def __init__(
        self,
        key: PeerKey,
        my_id: int,
        peer_ids: frozenset[int],
        *,
        nonce: bytes | None = None,
    ) -> None:
        self.key = key
        self.my_id = my_id
        self.peer_ids = peer_ids
        self.nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
        assert _is_nonce(self.nonce), "a nonce is NONCE_BYTES bytes"
        self.claimed: int | None = None  # the id the hello claimed
        self._nonce_i: bytes | None = None

    def challenge(self, hello: Any) -> tuple[bytes, bytes]:
        """Check a ``hello``'s args; the ``challenge`` frame's args. AuthError if refused."""
        if self._nonce_i is not None:
            raise AuthError("a second hello on one connection")
        nonce_i = self.read_hello(hello)
        if nonce_i == self.nonce:
            raise AuthError("the initiator echoed our nonce")
        self._nonce_i = nonce_i
        assert self.claimed is not None
        nonces = (nonce_i, self.nonce)
        return self.nonce, mac(self.key, _RESPONDER, self.claimed, self.my_id, nonces)

    def read_hello(self, hello: Any) -> bytes:
        """Check a ``hello``'s fields and note the id it claims; its nonce. AuthError if refused.

        All a TLS-vouched key checks: the certificate proved membership, the
        hello says which member, for which cluster and node.
        """
        if not (isinstance(hello, tuple) and len(hello) == 5):
            raise AuthError("malformed hello")
        version, cluster_id, initiator_id, responder_id, nonce_i = hello
        if version != VERSION or type(version) is not int:
            raise AuthError(f"unsupported handshake version {version!r}")
        if type(initiator_id) is not int or type(responder_id) is not int:
            raise AuthError("malformed hello")
        if not _is_nonce(nonce_i) or type(cluster_id) is not str:
            raise AuthError("malformed hello")
        self.claimed = initiator_id
        if cluster_id != self.key.cluster_id:
            raise AuthError(f"hello for cluster {cluster_id!r}, this is {self.key.cluster_id!r}")
        if responder_id != self.my_id:
            raise AuthError(f"hello addressed to n{responder_id}, this is n{self.my_id}")
        if initiator_id not in self.peer_ids:
            raise AuthError(f"p{initiator_id} is not a peer of n{self.my_id}")
        nonce: bytes = nonce_i
        return nonce

    def verify(self, proof: Any) -> int:
        """Check a ``proof``; the peer id the connection now speaks for. AuthError if refused."""
        if self._nonce_i is None or self.claimed is None:
            raise AuthError("proof before hello")
        if not _is_mac(proof):
            raise AuthError("malformed proof")
        nonces = (self._nonce_i, self.nonce)
        expected = mac(self.key, _INITIATOR, self.claimed, self.my_id, nonces)
        if not hmac.compare_digest(expected, proof):
            raise AuthError(f"p{self.claimed} did not prove the cluster's secret")
        return self.claimed


@dataclass
class Membership:
    """A node's side of peer authentication: its key, its id, and who may connect as a peer.

    ``peer_ids`` follows the cluster's configuration (the server replaces it
    as members are added and removed), so a new member authenticates like
    any peer; a connection already made keeps the identity it proved.
    """

    key: PeerKey
    node_id: int
    peer_ids: frozenset[int]  # every other member

    def responder(self) -> Responder:
        """The responder for one new connection."""
        return Responder(self.key, self.node_id, self.peer_ids)
