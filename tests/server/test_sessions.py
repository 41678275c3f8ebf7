"""Client sessions: at most once, first result kept, bounded, expired by log time.

Reference: Raft thesis §6.3 (implementing linearizable semantics: client sessions).
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.kv_protocol import (
    MAX_IN_FLIGHT_PER_CLIENT,
    DeleteOk,
    GetOk,
    GetOp,
    NoKeyResult,
    Op,
    PutOk,
    PutOp,
    Result,
    SessionExpiredResult,
    SetOk,
    StaleRequestResult,
    TxnResult,
    VersionMismatchResult,
)
from kvraft.raft.messages import Entry
from kvraft.raft.ready import Snapshot
from kvraft.rpc.codec import pack
from kvraft.server import state_snapshot
from kvraft.server.commands import apply_command, encode_command
from kvraft.server.kvstore import BadSnapshot, KVStore
from kvraft.server.rsm import RSM
from kvraft.server.sessions import SessionLimits, Sessions


def put(
    key: str = "k", value: str = "v", version: int = 0, *, cid: str = "c", rid: int = 1, ab: int = 1
) -> PutOp:
    return PutOp(key, value, version, cid, rid, ab)


def get(key: str = "k", *, cid: str = "c", rid: int = 1, ab: int = 1) -> GetOp:
    return GetOp(key, cid, rid, ab)


class Machine:
    """Sessions and a store, applying commands at consecutive log indexes as the RSM does."""

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.sessions = Sessions(limits)
        self.store = KVStore()
        self.index = 0

    def apply(self, op: Op | None) -> Result | None:
        """``None`` stands for an entry with no command (a leader's no-op)."""
        self.index += 1
        self.sessions.advance(self.index)
        return None if op is None else self.sessions.apply(self.store, op, self.index)


# ----------------------------------------------------------------- at most once


def test_a_resent_put_that_applied_gets_the_first_result_not_versionmismatch() -> None:
    m = Machine()
    assert m.apply(put(rid=1)) == PutOk(1, 1)
    assert m.apply(put(rid=1)) == PutOk(1, 1)
    assert m.store.get("k") == ("v", 1)


def test_a_resent_put_keeps_its_first_result_even_when_that_was_a_mismatch() -> None:
    m = Machine()
    m.apply(put(cid="other", rid=1))
    assert m.apply(put(version=0, rid=1)) == VersionMismatchResult(1)
    m.apply(put(version=1, cid="other", rid=2, ab=2))  # the key moves on to version 2
    assert m.apply(put(version=0, rid=1)) == VersionMismatchResult(1)
    assert m.store.get("k") == ("v", 2)


def test_a_resent_put_does_not_apply_again_after_the_key_came_back_to_its_version() -> None:
    """Versions only grow, but the first result must win even over a coincidence."""
    m = Machine()
    assert m.apply(put("new", version=2, rid=1)) == NoKeyResult()
    m.apply(put("new", version=0, cid="o", rid=1))
    m.apply(put("new", version=1, cid="o", rid=2, ab=2))
    assert m.store.version("new") == 2
    assert m.apply(put("new", version=2, rid=1)) == NoKeyResult()  # not applied now
    assert m.store.version("new") == 2


def test_a_repeated_get_reads_again_at_its_place_in_the_log() -> None:
    m = Machine()
    assert m.apply(get(rid=1)) == NoKeyResult()
    m.apply(put(cid="o", rid=1))
    assert m.apply(get(rid=1)) == GetOk("v", 1)
    assert m.sessions.results_held() == 1  # the put's; gets store nothing


# ------------------------------------------------------------------------ stale


def test_a_copy_older_than_what_the_client_acknowledged_is_refused_and_not_applied() -> None:
    """The delayed copy of a put told NoKey must not apply once the key exists."""
    m = Machine()
    assert m.apply(put(version=1, rid=1)) == NoKeyResult()
    m.apply(put(version=0, rid=2, ab=2))  # the client had its answer to 1
    assert m.apply(put(value="late", version=1, rid=1)) == StaleRequestResult()
    assert m.store.get("k") == ("v", 1)
    assert m.apply(get(rid=1, ab=1)) == StaleRequestResult()


def test_results_below_acked_below_are_forgotten() -> None:
    m = Machine()
    for rid in range(1, 6):
        m.apply(put(f"k{rid}", rid=rid, ab=1))
    assert m.sessions.results_held() == 5
    m.apply(get(rid=6, ab=4))
    assert m.sessions.results_held() == 2
    assert m.sessions.acked_below("c") == 4


def test_a_session_holds_at_most_the_window_of_results() -> None:
    """64 requests open at once is the bound; the decoder refuses one past (test_commands)."""
    m = Machine()
    for rid in range(1, 1 + MAX_IN_FLIGHT_PER_CLIENT):
        m.apply(put(f"k{rid}", rid=rid, ab=1))
    assert m.sessions.results_held() == MAX_IN_FLIGHT_PER_CLIENT
    m.apply(put("next", rid=1 + MAX_IN_FLIGHT_PER_CLIENT, ab=2))
    assert m.sessions.results_held() == MAX_IN_FLIGHT_PER_CLIENT


# --------------------------------------------------------------- forgotten


def test_a_put_of_a_forgotten_session_is_refused_as_expired_and_a_get_is_answered() -> None:
    m = Machine()
    assert m.apply(put(rid=5, ab=3)) == SessionExpiredResult()
    assert len(m.store) == 0 and "c" not in m.sessions
    assert m.apply(get(rid=6, ab=3)) == NoKeyResult()
    assert "c" not in m.sessions


def test_a_session_untouched_for_expiry_entries_is_forgotten_by_log_index() -> None:
    m = Machine(SessionLimits(expiry_entries=10))
    m.apply(put(cid="idle", rid=1))  # index 1
    m.apply(put(cid="busy", rid=1))
    for _ in range(8):  # indexes 3..10
        m.apply(None)
    assert "idle" in m.sessions
    m.apply(get(cid="busy", rid=2, ab=2))  # index 11: idle untouched since 1
    assert "idle" not in m.sessions and "busy" in m.sessions
    assert m.apply(put(cid="idle", value="again", rid=1, ab=2)) == SessionExpiredResult()


def test_over_the_session_cap_the_least_recently_used_is_evicted() -> None:
    m = Machine(SessionLimits(max_sessions=2))
    m.apply(put("a", cid="a"))
    m.apply(put("b", cid="b"))
    m.apply(get(cid="a", rid=2, ab=2))  # a is now the most recent
    m.apply(put("c", cid="c"))
    assert "b" not in m.sessions and "a" in m.sessions and "c" in m.sessions
    assert len(m.sessions) == 2


# ------------------------------------------------------------------ snapshots


def _busy_machine() -> Machine:
    m = Machine(SessionLimits(max_sessions=3, expiry_entries=50))
    m.apply(put(cid="x", rid=1))
    m.apply(put(version=5, cid="y", rid=1))
    m.apply(put(version=0, cid="y", rid=2, ab=1))
    m.apply(put("z", cid="z", rid=1))
    m.apply(get(cid="x", rid=2, ab=2))
    return m


def test_sessions_survive_a_snapshot_in_their_use_order() -> None:
    m = _busy_machine()
    data = state_snapshot.encoder(m.sessions.copy(), m.store.copy())()
    sessions, store = state_snapshot.decode(data, m.sessions.limits)
    assert sessions == m.sessions and store == m.store
    assert state_snapshot.encoder(sessions, store)() == data  # canonical
    # The restored replica evicts as the original does.
    twin = Machine(m.sessions.limits)
    twin.sessions, twin.store, twin.index = sessions, store, m.index
    for machine in (m, twin):
        machine.apply(put("w", cid="w"))
    assert twin.sessions == m.sessions
    assert "y" not in m.sessions


def _state(sessions: list[object], store: object = (3, 0, [], [1, []]), fmt: object = 3) -> bytes:
    return msgpack.packb([fmt, sessions, list(store)])  # type: ignore[call-overload, no-any-return]


OK = pack(PutOk(1, 1))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (KVStore().snapshot(), "triple"),  # a bare store
        (_state([], fmt=2), "unknown state snapshot format 2"),  # before revisions
        (_state([], fmt=4), "unknown state snapshot format 4"),
        (_state(["c", 1, 1]), "4-item sessions"),
        (_state(["c", 1, 5, [], "d", 1, 4, []]), "out of order"),
        (_state(["c", 1, 1, [], "c", 1, 2, []]), "repeated"),
        (_state(["c", 3, 1, [2, OK]]), "below acked_below"),
        (_state(["c", 1, 1, [2, OK, 2, OK]]), "out of order"),
        (_state(["c", 1, 1, [2, OK, 3]]), "result array of length 3"),
        (_state(["c", 1, 1, [2, 7]]), "bad result"),
        (_state(["c", 1, 1, [2, b"\xc1"]]), "undecodable"),
        (_state(["c", 1, 1, [2, pack(GetOk("v", 1))]]), "not a write's result"),
        (_state(["c", 1, 1, [2, pack(PutOk(0, 1))]]), "impossible"),
        (_state(["c", 1, 1, [2, pack(VersionMismatchResult(0))]]), "impossible"),
        (_state(["c", 1, 1, [2, pack(DeleteOk(-1, 1))]]), "impossible"),
        (
            _state(["c", 1, 1, [2, pack(TxnResult(True, (SetOk(0, 1),), 1))]]),
            "impossible",
        ),
        (_state(["c", 1, 1, [2, OK + b"\x00"]]), "undecodable"),
        (_state(["c", 1, 1, [2, b"\xd4\x17\x01"]]), "undecodable|expected"),
        (_state([b"c", 1, 1, []]), "bad session"),
        (_state(["c", 1, 1, [1, OK] * 65]), "result array"),
        (_state([], store=(3, 0, ["k"], [1, []])), "6-item"),
        (_state([]) + b"\x00", "unexpected bytes"),
        (_state([])[:-1], "truncated"),
        (b"\x01", "not a msgpack array"),
    ],
)
def test_the_state_snapshot_decoder_is_strict(data: bytes, why: str) -> None:
    with pytest.raises(BadSnapshot, match=why):
        state_snapshot.decode(data)


def test_a_snapshot_with_more_sessions_than_the_cap_is_refused() -> None:
    data = _state(["a", 1, 1, [], "b", 1, 1, []])
    with pytest.raises(BadSnapshot, match="2 sessions, over 1"):
        state_snapshot.decode(data, SessionLimits(max_sessions=1))


# ------------------------------------------------------------------ property


@st.composite
def logs_with_copies(draw: st.DrawFn) -> tuple[list[Op], list[Op]]:
    """Some clients' requests, and a log holding each at least once plus later copies.

    Each client sends its requests in order, up to a few at once (``acked_below``
    is its lowest unanswered request); a request's copies land anywhere after its
    first one, like resends to a new leader and copies delayed in transit.
    """
    n_clients = draw(st.integers(1, 3))
    keys = st.sampled_from(["a", "b"])
    pending: dict[str, list[Op]] = {}
    for c in range(n_clients):
        ops: list[Op] = []
        for rid in range(1, draw(st.integers(1, 6)) + 1):
            ab = draw(st.integers(max(1, rid - 2), rid))
            if draw(st.booleans()):
                ops.append(GetOp(draw(keys), f"c{c}", rid, ab))
            else:
                ops.append(
                    PutOp(draw(keys), f"v{c}.{rid}", draw(st.integers(0, 3)), f"c{c}", rid, ab)
                )
        pending[f"c{c}"] = ops
    firsts: list[Op] = []
    while any(pending.values()):
        cid = draw(st.sampled_from(sorted(c for c, ops in pending.items() if ops)))
        firsts.append(pending[cid].pop(0))
    log = list(firsts)
    for op in firsts:
        for _ in range(draw(st.integers(0, 2))):
            after = log.index(op) + 1
            log.insert(draw(st.integers(after, len(log))), op)
    return firsts, log


@settings(max_examples=300, deadline=None)
@given(logs_with_copies())
def test_a_log_with_copies_applies_as_each_command_once(case: tuple[list[Op], list[Op]]) -> None:
    """Duplicated and reordered copies change nothing: same store and same answers as
    applying each command once, and every copy answers its first result (or is stale).

    Reference: Raft thesis §6.3
    """
    firsts, log = case
    once, reference = KVStore(), {}
    for op in firsts:
        reference[(op.client_id, op.request_id)] = apply_command(once, op)
    m = Machine()
    seen: dict[tuple[str, int], Result] = {}
    for op in log:
        result = m.apply(op)
        ident = (op.client_id, op.request_id)
        if ident not in seen:
            seen[ident] = result  # type: ignore[assignment]
            assert result == reference[ident], op
        elif isinstance(op, PutOp):
            assert result in (seen[ident], StaleRequestResult()), op
    assert m.store == once
    # A replica restored from a snapshot of the end state is the same state machine.
    data = state_snapshot.encoder(m.sessions.copy(), m.store.copy())()
    assert state_snapshot.decode(data) == (m.sessions, m.store)


def test_a_replica_restored_from_the_rsm_snapshot_answers_a_resend_with_the_first_result() -> None:
    """Sessions travel in the RSM's snapshot (InstallSnapshot, restart): the restored
    replica does not apply the resend again."""
    source = RSM(0, KVStore(), op_timeout_s=1.0)
    source.apply(Entry(term=1, index=1, command=encode_command(put(rid=1))))
    data = source.capture_snapshot()()
    replica = RSM(1, KVStore(), op_timeout_s=1.0)
    replica.restore(Snapshot(1, 1, data))
    replica.apply(Entry(term=1, index=2, command=encode_command(put(rid=1))))
    assert replica.store.get("k") == ("v", 1)
    assert replica.skipped_commands == 0 and len(replica.sessions) == 1
    assert replica.sessions.acked_below("c") == 1
