"""The peer handshake's pure half: what a MAC proves, and every way a forger fails.

Each test runs a real Initiator against a real Responder (no I/O) and
changes one thing: the secret, the claimed id, the nonces, the role.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvraft.rpc.peer_auth import (
    MIN_SECRET_BYTES,
    NONCE_BYTES,
    AuthError,
    Initiator,
    Membership,
    PeerKey,
    Responder,
    check_secret,
    new_secret,
    transcript,
)

KEY = PeerKey(b"the-cluster-secret-0123456789", "prod")
PEERS = frozenset({0, 1, 2})


def responder_of(node_id: int = 0, key: PeerKey = KEY) -> Responder:
    return Membership(key, node_id, PEERS - {node_id}).responder()


def test_members_with_the_secret_authenticate_each_other() -> None:
    initiator, responder = Initiator(KEY, 1, 0), responder_of(0)
    proof = initiator.proof(responder.challenge(initiator.hello()))
    assert responder.verify(proof) == 1


def test_initiator_without_the_secret_is_refused() -> None:
    forger = Initiator(PeerKey(b"a-guessed-secret-0123456789", "prod"), 1, 0)
    responder = responder_of(0)
    challenge = responder.challenge(forger.hello())
    # The forger cannot check the responder's MAC; it sends some proof anyway.
    with pytest.raises(AuthError, match="did not prove"):
        forger.proof(challenge)
    with pytest.raises(AuthError, match="p1 did not prove"):
        responder.verify(b"\x00" * 32)


def test_responder_without_the_secret_is_refused_by_the_initiator() -> None:
    initiator = Initiator(KEY, 1, 0)
    fake = responder_of(0, PeerKey(b"a-guessed-secret-0123456789", "prod"))
    with pytest.raises(AuthError, match="n0 did not prove"):
        initiator.proof(fake.challenge(initiator.hello()))


def test_a_proof_for_one_claimed_id_does_not_prove_another() -> None:
    """A member's proof as p1 is useless to someone who claims p2 with it."""
    honest = Initiator(KEY, 1, 0)
    responder = responder_of(0)
    proof = honest.proof(responder.challenge(honest.hello()))
    # The same nonces, the claim changed to p2: the responder expects p2's MAC.
    claim_2 = responder_of(0, KEY)
    claim_2.nonce = responder.nonce
    hello = (1, "prod", 2, 0, honest.nonce)
    claim_2.challenge(hello)
    with pytest.raises(AuthError, match="p2 did not prove"):
        claim_2.verify(proof)


def test_a_replayed_handshake_fails_against_a_fresh_responder_nonce() -> None:
    initiator, first = Initiator(KEY, 1, 0), responder_of(0)
    hello = initiator.hello()
    proof = initiator.proof(first.challenge(hello))
    assert first.verify(proof) == 1
    # An eavesdropper replays the recorded hello and proof on a new connection.
    second = responder_of(0)
    assert second.nonce != first.nonce
    second.challenge(hello)
    with pytest.raises(AuthError, match="did not prove"):
        second.verify(proof)


def test_a_reflected_responder_mac_is_not_a_proof() -> None:
    """The attacker sends back the responder's own MAC over the same nonces."""
    responder = responder_of(0)
    _, mac_r = responder.challenge((1, "prod", 1, 0, b"\x07" * NONCE_BYTES))
    with pytest.raises(AuthError, match="did not prove"):
        responder.verify(mac_r)


def test_a_reflected_initiator_hello_is_not_a_challenge() -> None:
    """A responder that echoes the initiator's nonce (to get it to MAC its own) is refused."""
    initiator = Initiator(KEY, 1, 0)
    with pytest.raises(AuthError, match="echoed"):
        initiator.proof((initiator.nonce, b"\x00" * 32))


def test_a_proof_for_another_node_or_cluster_is_refused() -> None:
    to_node_2 = Initiator(KEY, 1, 2)
    with pytest.raises(AuthError, match="addressed to n2"):
        responder_of(0).challenge(to_node_2.hello())
    other_cluster = Initiator(PeerKey(KEY.secret, "staging"), 1, 0)
    with pytest.raises(AuthError, match="cluster 'staging'"):
        responder_of(0).challenge(other_cluster.hello())


def test_ids_outside_the_membership_are_refused() -> None:
    for claimed in (0, 3):  # itself, a stranger
        with pytest.raises(AuthError, match="not a peer"):
            responder_of(0).challenge(Initiator(KEY, claimed, 0).hello())


@pytest.mark.parametrize(
    "hello",
    [
        None,
        (1, "prod", 1, 0),
        (2, "prod", 1, 0, b"n" * NONCE_BYTES),  # unknown version
        (True, "prod", 1, 0, b"n" * NONCE_BYTES),  # bool is not the version int
        (1, "prod", "1", 0, b"n" * NONCE_BYTES),
        (1, "prod", 1, 0, b"n" * (NONCE_BYTES - 1)),  # short nonce
        (1, b"prod", 1, 0, b"n" * NONCE_BYTES),
    ],
)
def test_malformed_hellos_are_refused(hello: object) -> None:
    with pytest.raises(AuthError):
        responder_of(0).challenge(hello)


def test_proof_before_hello_and_second_hello_are_refused() -> None:
    with pytest.raises(AuthError, match="before hello"):
        responder_of(0).verify(b"\x00" * 32)
    responder = responder_of(0)
    hello = Initiator(KEY, 1, 0).hello()
    responder.challenge(hello)
    with pytest.raises(AuthError, match="second hello"):
        responder.challenge(hello)


def test_secrets_are_checked_at_the_bound_and_never_shown() -> None:
    assert check_secret(b"  " + b"s" * MIN_SECRET_BYTES + b"\n") == b"s" * MIN_SECRET_BYTES
    with pytest.raises(ValueError, match=f"{MIN_SECRET_BYTES - 1} bytes") as caught:
        check_secret(b"t" * (MIN_SECRET_BYTES - 1))
    assert "ttt" not in str(caught.value)
    assert KEY.secret.decode() not in repr(KEY)
    assert len(check_secret(new_secret())) >= MIN_SECRET_BYTES
    assert new_secret() != new_secret()


Fields = tuple[bytes, str, int, int, bytes, bytes]
_fields = st.tuples(
    st.binary(max_size=8), st.text(max_size=8), st.integers(0, 20), st.integers(0, 20),
    st.binary(max_size=8), st.binary(max_size=8),
)  # fmt: skip


@given(_fields, _fields)
def test_transcripts_of_different_fields_differ(a: Fields, b: Fields) -> None:
    """Length-prefixed fields: no two field lists share a transcript (no splicing)."""
    if a != b:
        assert transcript(*a) != transcript(*b)
