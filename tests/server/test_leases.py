"""Leases in the replicated state: the commands, the store's key sets, snapshots, every bound.

The state machine side only (pure, no clock): who decides expiry and when is
tests/server/test_lease_keeper.py; real processes are tests/cluster/test_leases_cluster.py.
"""

from __future__ import annotations

import pytest

from kvraft.errors import InvalidArgument
from kvraft.kv_protocol import (
    DeleteOk,
    DeleteOp,
    GetOk,
    GetOp,
    NoKeyResult,
    PutOk,
    PutOp,
    SetOk,
    SetOp,
    TxnOp,
    TxnOpFailedResult,
    TxnPut,
    TxnResult,
    TxnSet,
    check_op,
)
from kvraft.lease_protocol import (
    MAX_KEYS_PER_LEASE,
    MAX_LEASE_ID,
    MAX_LEASE_TTL_S,
    MAX_LEASES,
    MIN_LEASE_TTL_S,
    LeaseExpireOp,
    LeaseGrantOk,
    LeaseGrantOp,
    LeaseKeepaliveOk,
    LeaseKeepaliveOp,
    LeaseLimitResult,
    LeaseNotFoundResult,
    LeaseRevokeOp,
    LeaseTtlOp,
    LeaseTtlResult,
)
from kvraft.rpc.codec import pack
from kvraft.server.commands import BadCommand, apply_command, decode_command, encode_command
from kvraft.server.kvstore import BadSnapshot, KVStore
from kvraft.server.sessions import Sessions

S = ("c", 1, 0)


def run(store: KVStore, op: object) -> object:
    return apply_command(store, op)  # type: ignore[arg-type]


def grant(store: KVStore, ttl: int = 10) -> int:
    result = run(store, LeaseGrantOp(ttl, *S))
    assert isinstance(result, LeaseGrantOk), result
    return result.lease_id


# --------------------------------------------------------------------- commands


def test_lease_ids_come_from_the_replicated_counter_so_every_replica_agrees() -> None:
    a, b = KVStore(), KVStore()
    ids_a = [grant(a) for _ in range(3)]
    ids_b = [grant(b) for _ in range(3)]
    assert ids_a == ids_b == [1, 2, 3]
    run(a, LeaseRevokeOp(2, *S))
    assert grant(a) == 4  # an id is never reused
    assert run(a, LeaseGrantOp(7, *S)) == LeaseGrantOk(5, 7)


def test_grant_and_keepalive_change_no_revision() -> None:
    store = KVStore()
    lease = grant(store)
    assert run(store, LeaseKeepaliveOp(lease, *S)) == LeaseKeepaliveOk(lease, 10)
    assert store.revision == 0


def test_keepalive_counts_renewals_and_an_unknown_lease_is_not_found() -> None:
    store = KVStore()
    lease = grant(store)
    for _ in range(3):
        run(store, LeaseKeepaliveOp(lease, *S))
    held = store.leases.get(lease)
    assert held is not None and held.renewals == 3
    assert run(store, LeaseKeepaliveOp(99, *S)) == LeaseNotFoundResult(99)


def test_a_put_or_set_attaches_the_key_and_the_key_reports_its_lease() -> None:
    store = KVStore()
    lease = grant(store)
    assert run(store, SetOp("a", "1", *S, lease)) == SetOk(1, 1)
    assert run(store, PutOp("b", "1", 0, *S, lease)) == PutOk(1, 2)
    kvs, _ = store.range("", "", 0, False, 1 << 20)
    assert [(kv.key, kv.lease) for kv in kvs] == [("a", lease), ("b", lease)]
    ttl = run(store, LeaseTtlOp(lease, True, *S))
    assert ttl == LeaseTtlResult(lease, 10, -1.0, ("a", "b"))
    assert run(store, LeaseTtlOp(lease, False, *S)) == LeaseTtlResult(lease, 10, -1.0, ())


def test_a_write_without_a_lease_detaches_the_key_and_one_with_another_moves_it() -> None:
    store = KVStore()
    one, two = grant(store), grant(store)
    run(store, SetOp("k", "1", *S, one))
    run(store, SetOp("k", "2", *S, two))
    assert store.entry("k")[4] == two  # type: ignore[index]
    assert store.leases.get(one).keys == set()  # type: ignore[union-attr]
    run(store, SetOp("k", "3", *S))
    assert store.entry("k")[4] == 0  # type: ignore[index]
    assert store.leases.get(two).keys == set()  # type: ignore[union-attr]
    # Revoking the lease it left deletes nothing.
    assert run(store, LeaseRevokeOp(two, *S)) == DeleteOk(0, store.revision)
    assert store.lookup("k") == ("3", 3)


def test_a_write_to_an_unknown_lease_is_refused_and_changes_nothing() -> None:
    store = KVStore()
    run(store, SetOp("k", "1", *S))
    before = store.snapshot()
    assert run(store, SetOp("k", "2", *S, 5)) == LeaseNotFoundResult(5)
    assert run(store, PutOp("k", "2", 1, *S, 5)) == LeaseNotFoundResult(5)
    assert run(store, PutOp("new", "2", 0, *S, 5)) == LeaseNotFoundResult(5)
    txn = TxnOp((), (TxnSet("x", "1"), TxnPut("k", "2", 1, 5)), (), *S)
    assert run(store, txn) == LeaseNotFoundResult(5)
    assert store.snapshot() == before


def test_a_txn_attaches_keys_at_its_one_revision() -> None:
    store = KVStore()
    lease = grant(store)
    txn = TxnOp((), (TxnSet("x", "1", lease), TxnPut("y", "1", 0, lease)), (), *S)
    result = run(store, txn)
    assert isinstance(result, TxnResult) and result.revision == 1
    assert store.leases.get(lease).keys == {"x", "y"}  # type: ignore[union-attr]
    # A versioned op that fails leaves the lease's keys as they were.
    bad = TxnOp((), (TxnSet("z", "1", lease), TxnPut("x", "2", 7, lease)), (), *S)
    assert isinstance(run(store, bad), TxnOpFailedResult)
    assert store.leases.get(lease).keys == {"x", "y"}  # type: ignore[union-attr]


def test_a_revoke_deletes_every_key_of_the_lease_at_one_revision_as_deletes() -> None:
    store = KVStore()
    lease = grant(store)
    for key in ("c", "a", "b"):
        run(store, SetOp(key, "v", *S, lease))
    run(store, SetOp("other", "v", *S))
    store.record_changes()
    assert run(store, LeaseRevokeOp(lease, *S)) == DeleteOk(3, 5)
    changes = store.take_changes()
    # Sorted (sets do not iterate alike in every process), and each a removal.
    assert [(key, after) for key, _, after in changes] == [("a", None), ("b", None), ("c", None)]
    assert len(store) == 1 and store.revision == 5
    assert lease not in store.leases
    assert run(store, LeaseRevokeOp(lease, *S)) == LeaseNotFoundResult(lease)
    assert run(store, LeaseTtlOp(lease, False, *S)) == LeaseNotFoundResult(lease)


def test_a_lease_without_keys_is_revoked_without_a_new_revision() -> None:
    store = KVStore()
    lease = grant(store)
    assert run(store, LeaseRevokeOp(lease, *S)) == DeleteOk(0, 0)


def test_deleting_a_key_detaches_it_so_the_revoke_does_not_delete_it_again() -> None:
    store = KVStore()
    lease = grant(store)
    run(store, SetOp("k", "v", *S, lease))
    assert run(store, DeleteOp("k", 1, *S)) == DeleteOk(1, 2)
    run(store, SetOp("k", "new", *S))  # recreated without the lease
    assert run(store, LeaseRevokeOp(lease, *S)) == DeleteOk(0, 3)
    assert run(store, GetOp("k", *S)) == GetOk("new", 1)


def test_an_expiry_applies_only_at_the_renewal_count_its_proposer_saw() -> None:
    """A keepalive that applied after the leader decided wins: the lease lives on."""
    store = KVStore()
    lease = grant(store)
    run(store, SetOp("k", "v", *S, lease))
    run(store, LeaseKeepaliveOp(lease, *S))  # renewals: 1
    assert run(store, LeaseExpireOp(lease, 0, *S)) == LeaseKeepaliveOk(lease, 10)
    assert "k" in store
    assert run(store, LeaseExpireOp(lease, 1, *S)) == DeleteOk(1, 2)
    assert "k" not in store and lease not in store.leases
    assert run(store, LeaseExpireOp(lease, 1, *S)) == LeaseNotFoundResult(lease)


def test_a_resent_grant_gets_the_first_lease_not_a_second() -> None:
    sessions, store = Sessions(), KVStore()
    first = sessions.apply(store, LeaseGrantOp(10, "c", 1, 1), 1)
    again = sessions.apply(store, LeaseGrantOp(10, "c", 1, 1), 2)
    assert first == again == LeaseGrantOk(1, 10)
    assert len(store.leases) == 1


def test_lease_ttl_is_a_read_that_keeps_no_result_in_the_session() -> None:
    sessions, store = Sessions(), KVStore()
    lease = sessions.apply(store, LeaseGrantOp(10, "c", 1, 1), 1)
    assert isinstance(lease, LeaseGrantOk)
    sessions.apply(store, LeaseTtlOp(lease.lease_id, True, "c", 2, 1), 2)
    assert sessions.results_held() == 1  # the grant's only


# -------------------------------------------------------------------- snapshots


def _leased_store() -> KVStore:
    store = KVStore()
    one, two = grant(store, 5), grant(store, 60)
    grant(store, 7)  # no keys
    run(store, LeaseRevokeOp(grant(store), *S))  # next id moves past it
    for i in range(5):
        run(store, SetOp(f"k{i}", "v", *S, one if i % 2 else two))
    run(store, LeaseKeepaliveOp(two, *S))
    run(store, SetOp("plain", "v", *S))
    return store


def test_a_snapshot_carries_the_leases_their_counts_and_their_keys() -> None:
    store = _leased_store()
    data = store.snapshot()
    restored = KVStore.restore(data)
    assert restored == store
    assert restored.leases.get(2).keys == {"k0", "k2", "k4"}  # type: ignore[union-attr]
    assert restored.leases.get(2).renewals == 1  # type: ignore[union-attr]
    assert restored.leases.next_id == 5
    assert restored.snapshot() == data  # canonical
    assert store.copy().snapshot() == data  # the copy the node encodes in a thread
    # A restored replica revokes exactly as the original does.
    assert run(restored, LeaseRevokeOp(1, *S)) == run(store, LeaseRevokeOp(1, *S))
    assert restored == store


def _with_table(store: KVStore, table: list[object]) -> bytes:
    import msgpack

    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(store.snapshot())
    fmt, revision, items, _ = unpacker.unpack()
    return msgpack.packb([fmt, revision, items, table])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ([5, [1, 5, 0, 2, 60, 1, 3, 7, 0]], None),  # the real one: accepted
        ([5, [2, 60, 1, 3, 7, 0]], "not live"),  # keys on lease 1, which is missing
        ([5, [2, 60, 1, 1, 5, 0, 3, 7, 0]], "out of order"),
        ([2, [1, 5, 0, 2, 60, 1]], "past next id"),
        ([5, [1, 0, 0, 2, 60, 1, 3, 7, 0]], "impossible ttl"),
        ([5, [1, 5, -1, 2, 60, 1, 3, 7, 0]], "impossible ttl"),
        ([5, [1, 5, 0, 2, 60]], "lease array"),
        ([5, [1, 5, True, 2, 60, 1, 3, 7, 0]], "ints"),
        ([0, []], "next lease id"),
        ([5], "pair"),
        ("x", "lease table is not a msgpack array"),
    ],
)
def test_the_lease_table_of_a_snapshot_is_read_strictly(table: list[object], why: str) -> None:
    data = _with_table(_leased_store(), table)
    if why is None:
        assert KVStore.restore(data) == _leased_store()
        return
    with pytest.raises(BadSnapshot, match=why):
        KVStore.restore(data)


# ----------------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("ttl", "ok"),
    [
        (MIN_LEASE_TTL_S, True),
        (MIN_LEASE_TTL_S - 1, False),
        (MAX_LEASE_TTL_S, True),
        (MAX_LEASE_TTL_S + 1, False),
        (0, False),
        (-5, False),
        (2.5, False),
        (True, False),
    ],
)
def test_the_ttl_is_whole_seconds_within_its_bounds(ttl: object, ok: bool) -> None:
    op = LeaseGrantOp(ttl, *S)  # type: ignore[arg-type]
    if ok:
        check_op(op)
    else:
        with pytest.raises(InvalidArgument, match="ttl must be an int of seconds"):
            check_op(op)


@pytest.mark.parametrize(
    ("lease_id", "ok"),
    [(1, True), (0, False), (MAX_LEASE_ID, True), (MAX_LEASE_ID + 1, False), (True, False)],
)
def test_a_lease_id_is_a_positive_int_within_its_bound(lease_id: object, ok: bool) -> None:
    for op in (
        LeaseKeepaliveOp(lease_id, *S),  # type: ignore[arg-type]
        LeaseRevokeOp(lease_id, *S),  # type: ignore[arg-type]
        LeaseTtlOp(lease_id, False, *S),  # type: ignore[arg-type]
    ):
        if ok:
            check_op(op)
        else:
            with pytest.raises(InvalidArgument, match="lease id"):
                check_op(op)


def test_a_put_takes_lease_zero_for_none_and_refuses_a_negative_one() -> None:
    check_op(SetOp("k", "v", *S, 0))
    check_op(PutOp("k", "v", 0, *S, MAX_LEASE_ID))
    for bad in (-1, MAX_LEASE_ID + 1, True):
        with pytest.raises(InvalidArgument, match="lease id"):
            check_op(SetOp("k", "v", *S, bad))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="lease id"):
            check_op(TxnOp((), (TxnSet("k", "v", bad),), (), *S))  # type: ignore[arg-type]


def test_at_most_max_leases_live_at_once() -> None:
    store = KVStore()
    for _ in range(MAX_LEASES):
        grant(store)
    assert len(store.leases) == MAX_LEASES
    before = store.leases.next_id
    result = run(store, LeaseGrantOp(10, *S))
    assert isinstance(result, LeaseLimitResult) and str(MAX_LEASES) in result.message
    assert store.leases.next_id == before  # nothing changed
    run(store, LeaseRevokeOp(1, *S))
    assert isinstance(run(store, LeaseGrantOp(10, *S)), LeaseGrantOk)


def test_at_most_max_keys_per_lease() -> None:
    store = KVStore()
    lease = grant(store)
    for i in range(MAX_KEYS_PER_LEASE):
        assert isinstance(run(store, SetOp(f"k{i}", "v", *S, lease)), SetOk)
    # A key already on the lease takes no more room; a new one is refused.
    assert isinstance(run(store, SetOp("k0", "again", *S, lease)), SetOk)
    revision = store.revision
    refused = run(store, SetOp("one-more", "v", *S, lease))
    assert isinstance(refused, LeaseLimitResult)
    assert "one-more" not in store and store.revision == revision
    # Two new keys in one txn count as two.
    assert isinstance(run(store, DeleteOp("k1", 1, *S)), DeleteOk)
    txn = TxnOp((), (TxnSet("n1", "v", lease), TxnSet("n2", "v", lease)), (), *S)
    assert isinstance(run(store, txn), LeaseLimitResult)
    txn = TxnOp((), (TxnSet("n1", "v", lease),), (), *S)
    assert isinstance(run(store, txn), TxnResult)
    assert run(store, LeaseRevokeOp(lease, *S)) == DeleteOk(MAX_KEYS_PER_LEASE, revision + 3)


# --------------------------------------------------------------------- the log


def test_lease_commands_survive_the_log_encoding() -> None:
    for op in (
        LeaseGrantOp(10, *S),
        LeaseKeepaliveOp(3, *S),
        LeaseRevokeOp(3, *S),
        LeaseTtlOp(3, True, *S),
        LeaseExpireOp(3, 9, *S),
        SetOp("k", "v", *S, 3),
        PutOp("k", "v", 0, *S, 3),
        TxnOp((), (TxnSet("k", "v", 3), TxnPut("j", "v", 0, 3)), (), *S),
    ):
        assert decode_command(encode_command(op)) == op  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("op", "why"),
    [
        (LeaseGrantOp(0, *S), "ttl"),
        (LeaseKeepaliveOp(0, *S), "lease id"),
        (LeaseRevokeOp(-1, *S), "lease id"),
        (LeaseExpireOp(1, -1, *S), "renewals"),
        (SetOp("k", "v", *S, -1), "negative lease"),
    ],
)
def test_decode_refuses_lease_commands_out_of_bounds(op: object, why: str) -> None:
    with pytest.raises(BadCommand, match=why):
        decode_command(pack(op))


def test_a_missing_key_on_a_lease_is_still_nokey_for_a_versioned_put() -> None:
    store = KVStore()
    lease = grant(store)
    assert run(store, PutOp("k", "v", 3, *S, lease)) == NoKeyResult()
