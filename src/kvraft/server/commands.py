"""Commands in the Raft log: their bytes, and what applying one does to the store.

The commands themselves (:data:`~kvraft.kv_protocol.Op`: get, put, set,
delete, delete_range, range, txn) and their results are the protocol both
ends share, in :mod:`kvraft.kv_protocol`; this is the server-only half. A log
entry's bytes are the command's wire encoding (:func:`encode_command`): one
codec, one set of classes from the client to the state machine.

Revisions: a command that changes the store advances its revision by exactly
one, whatever it changed (a delete_range of many keys, a txn of many writes
all share the one new revision); a command that changes nothing (a read, a
failed version check, a delete_range that finds nothing, a txn whose branch
writes nothing) leaves it.

Transactions, all or nothing and deterministic: the compares are evaluated
against the store as it is; the branch they choose is checked first — every
versioned put and delete against the store before the txn, which is the
store it meets, because :func:`~kvraft.kv_protocol.txn_error` refuses a
branch that writes a key twice — and if any check fails nothing applies and
the answer is TxnOpFailedResult naming the op. Otherwise the operations run
in order (a read sees the branch's earlier writes), and every read of the
txn reports the txn's final revision. Reads in a txn share
:data:`~kvraft.kv_protocol.MAX_TXN_READ_BYTES`, because the result is kept in
the client's session.

Leases (:mod:`kvraft.lease_protocol`): a grant takes the table's next id;
a keepalive counts a renewal; a revoke, or an expiry at the renewal count
its proposer saw, deletes the lease's keys (sorted) at one new revision (none
if it had no keys) and drops the lease. A put or set (in a txn too) naming a
lease that is not live is LeaseNotFoundResult, one that would pass
MAX_KEYS_PER_LEASE is LeaseLimitResult: nothing of the command applies.

Whose fault: :func:`decode_command` raises :class:`BadCommand` for bytes that
are not exactly one well-formed command; in a log entry that is a bug or a
raw test-hook submit, never user input (user input was checked with
``check_op`` before it was submitted).
"""

from __future__ import annotations

import dataclasses
from typing import assert_never

from kvraft.errors import ProtocolError
from kvraft.kv_protocol import (
    COMMAND_TYPES,
    MAX_RANGE_REPLY_BYTES,
    MAX_TXN_READ_BYTES,
    MAX_VERSION,
    RANGE_KEY_OVERHEAD_BYTES,
    CompactOk,
    CompactOp,
    Compare,
    DeleteOk,
    DeleteOp,
    DeleteRangeOp,
    GetOk,
    GetOp,
    KeyValue,
    NoKeyResult,
    Op,
    PutOk,
    PutOp,
    RangeOp,
    RangeResult,
    Result,
    SetOk,
    SetOp,
    TxnDelete,
    TxnDeleteRange,
    TxnGet,
    TxnOp,
    TxnOpFailedResult,
    TxnPut,
    TxnRange,
    TxnRequest,
    TxnResult,
    TxnSet,
    VersionMismatchResult,
    acked_below_error,
    txn_error,
    utf8_len,
)
from kvraft.lease_protocol import (
    MAX_KEYS_PER_LEASE,
    MAX_LEASES,
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
    lease_op_error,
)
from kvraft.rpc.codec import pack, unpack
from kvraft.server.kvstore import KVStore


class BadCommand(ValueError):
    """Bytes that do not decode to exactly one well-formed command."""


# ------------------------------------------------------------------- encoding


def encode_command(op: Op) -> bytes:
    """The log-entry bytes of ``op`` (the wire encoding of the message itself)."""
    if type(op) not in COMMAND_TYPES:
        raise TypeError(f"not a command: {type(op).__name__}")
    return pack(op)


def decode_command(data: bytes) -> Op:
    """The command :func:`encode_command` made; BadCommand for anything else.

    Refused: undecodable msgpack, trailing bytes, any value that is not a
    command (other wire messages included), wrong field types (the codec
    checks every field, so a bool is not an int), negative versions or
    request ids, an ``acked_below`` the protocol forbids (above the request
    id, or a window over MAX_IN_FLIGHT_PER_CLIENT: that window is what
    bounds a client session), a range whose end is before its start or whose
    limit is negative, and a txn that breaks :func:`~kvraft.kv_protocol.txn_error`'s
    rules (its apply relies on them). Size limits are not checked here:
    they are a submission policy (``check_op``), and a committed entry must
    apply the same on every replica whatever the limits of the one decoding it.
    """
    try:
        op = unpack(data)
    except ProtocolError as exc:
        raise BadCommand(str(exc)) from None
    if type(op) not in COMMAND_TYPES:
        raise BadCommand(f"not a command: {type(op).__name__}")
    if op.request_id < 0:
        raise BadCommand(f"negative request id {op.request_id}")
    why = acked_below_error(op.request_id, op.acked_below)
    if why is not None:
        raise BadCommand(why)
    if type(op) is PutOp or type(op) is DeleteOp:
        if not 0 <= op.version <= MAX_VERSION:
            raise BadCommand(f"{type(op).__name__} version {op.version} out of range")
    elif type(op) is RangeOp or type(op) is DeleteRangeOp:
        if op.end != "" and op.end < op.start:
            raise BadCommand(f"range end {op.end!r} before start {op.start!r}")
        if type(op) is RangeOp and op.limit < 0:
            raise BadCommand(f"negative range limit {op.limit}")
    elif type(op) is CompactOp:
        if op.revision < 0:
            raise BadCommand(f"negative compact revision {op.revision}")
    elif type(op) is TxnOp:
        why = txn_error(op)
        if why is not None:
            raise BadCommand(why)
    elif isinstance(
        op, LeaseGrantOp | LeaseRevokeOp | LeaseKeepaliveOp | LeaseTtlOp | LeaseExpireOp
    ):
        why = lease_op_error(op)
        if why is not None:
            raise BadCommand(why)
    if isinstance(op, PutOp | SetOp) and op.lease < 0:
        raise BadCommand(f"negative lease id {op.lease}")
    return op  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- applying


def apply_command(store: KVStore, op: Op) -> Result:
    """Apply one committed command to ``store``; the result for the waiting RPC.

    Deterministic: the same store and command give the same result and the
    same new store on every replica.
    """
    match op:
        case GetOp(key=key):
            entry = store.lookup(key)
            if entry is None:
                return NoKeyResult()
            return GetOk(entry[0], entry[1])
        case PutOp(key=key, value=value, version=version, lease=lease):
            refused = _lease_refusal(store, {lease: [key]} if lease else {})
            if refused is not None:
                return refused
            current = store.version(key)
            if version != current:
                if current == 0:
                    return NoKeyResult()
                return VersionMismatchResult(current)
            revision = store.revision + 1
            new_version = store.write(key, value, revision, lease)
            store.set_revision(revision)
            return PutOk(new_version, revision)
        case SetOp(key=key, value=value, lease=lease):
            refused = _lease_refusal(store, {lease: [key]} if lease else {})
            if refused is not None:
                return refused
            revision = store.revision + 1
            new_version = store.write(key, value, revision, lease)
            store.set_revision(revision)
            return SetOk(new_version, revision)
        case DeleteOp(key=key, version=version):
            current = store.version(key)
            if current == 0:
                return NoKeyResult()
            if version != current:
                return VersionMismatchResult(current)
            store.remove(key)
            store.set_revision(store.revision + 1)
            return DeleteOk(1, store.revision)
        case DeleteRangeOp(start=start, end=end):
            return _delete_range(store, start, end, store.revision + 1)
        case RangeOp(start=start, end=end, limit=limit, keys_only=keys_only):
            kvs, more = store.range(start, end, limit, keys_only, MAX_RANGE_REPLY_BYTES)
            return RangeResult(tuple(kvs), store.revision, more)
        case TxnOp():
            return _apply_txn(store, op)
        case CompactOp(revision=revision):
            # The store is unchanged; the RSM drops the watch history below this.
            return CompactOk(min(revision, store.revision + 1))
        case LeaseGrantOp(ttl=ttl):
            if store.leases.full():
                return LeaseLimitResult(f"{MAX_LEASES} leases are live: revoke some first")
            return LeaseGrantOk(store.leases.grant(ttl), ttl)
        case LeaseKeepaliveOp(lease_id=lease_id):
            held = store.leases.get(lease_id)
            if held is None:
                return LeaseNotFoundResult(lease_id)
            held.renewals += 1
            return LeaseKeepaliveOk(lease_id, held.ttl)
        case LeaseRevokeOp(lease_id=lease_id):
            if lease_id not in store.leases:
                return LeaseNotFoundResult(lease_id)
            return revoke_lease(store, lease_id)
        case LeaseExpireOp(lease_id=lease_id, renewals=renewals):
            held = store.leases.get(lease_id)
            if held is None:
                return LeaseNotFoundResult(lease_id)
            if held.renewals != renewals:
                # Renewed after the leader decided it had expired: it lives on.
                return LeaseKeepaliveOk(lease_id, held.ttl)
            return revoke_lease(store, lease_id)
        case LeaseTtlOp(lease_id=lease_id, keys=keys):
            held = store.leases.get(lease_id)
            if held is None:
                return LeaseNotFoundResult(lease_id)
            listed = tuple(sorted(held.keys)) if keys else ()
            return LeaseTtlResult(lease_id, held.ttl, -1.0, listed)
        case _:
            assert_never(op)


def revoke_lease(store: KVStore, lease_id: int) -> DeleteOk:
    """Delete a live lease's keys at one new revision (none if it has none), then the lease."""
    lease = store.leases.get(lease_id)
    assert lease is not None, lease_id
    keys = sorted(lease.keys)
    for key in keys:
        store.remove(key)
    if keys:
        store.set_revision(store.revision + 1)
    store.leases.pop(lease_id)
    return DeleteOk(len(keys), store.revision)


def _lease_refusal(
    store: KVStore, attaching: dict[int, list[str]]
) -> LeaseNotFoundResult | LeaseLimitResult | None:
    """Why writes attaching these keys to these leases must not apply, or None.

    ``attaching`` maps a lease id to the keys a command writes with it; a
    key already on that lease takes no room.
    """
    for lease_id in sorted(attaching):
        lease = store.leases.get(lease_id)
        if lease is None:
            return LeaseNotFoundResult(lease_id)
        new = sum(1 for key in set(attaching[lease_id]) if key not in lease.keys)
        if len(lease.keys) + new > MAX_KEYS_PER_LEASE:
            return LeaseLimitResult(
                f"lease {lease_id} has {len(lease.keys)} keys: at most {MAX_KEYS_PER_LEASE}"
            )
    return None


def _delete_range(store: KVStore, start: str, end: str, revision: int) -> DeleteOk:
    """Remove the keys in ``[start, end)``; commits ``revision`` if any was removed."""
    keys = list(store.keys_in(start, end))
    for key in keys:
        store.remove(key)
    if keys:
        store.set_revision(revision)
    return DeleteOk(len(keys), store.revision)


def compare_holds(store: KVStore, cmp: Compare) -> bool:
    """Whether ``cmp`` holds on ``store`` (Compare's docstring gives the rules)."""
    entry = store.entry(cmp.key)
    actual: int | str | bool
    match cmp.target:
        case "exists":
            actual = entry is not None
        case "value":
            if entry is None:
                return False
            actual = entry[0]
        case "version":
            actual = 0 if entry is None else entry[1]
        case "create_revision":
            actual = 0 if entry is None else entry[2]
        case "mod_revision":
            actual = 0 if entry is None else entry[3]
        case _:
            raise AssertionError(cmp.target)  # decode_command refuses it
    expected = cmp.value
    match cmp.op:
        case "==":
            return actual == expected
        case "!=":
            return actual != expected
        case "<":
            return actual < expected  # type: ignore[operator]
        case ">":
            return actual > expected  # type: ignore[operator]
    raise AssertionError(cmp.op)


def _version_failure(store: KVStore, branch: tuple[TxnRequest, ...]) -> tuple[int, int] | None:
    """The first versioned op of ``branch`` whose version is not its key's: (index, current)."""
    for i, item in enumerate(branch):
        if isinstance(item, TxnPut):
            current = store.version(item.key)
            if item.version != current:
                return i, current
        elif isinstance(item, TxnDelete) and item.version is not None:
            current = store.version(item.key)
            if current == 0 or item.version != current:
                return i, current
    return None


def _apply_txn(
    store: KVStore, op: TxnOp
) -> TxnResult | TxnOpFailedResult | LeaseNotFoundResult | LeaseLimitResult:
    succeeded = all(compare_holds(store, cmp) for cmp in op.compare)
    branch = op.success if succeeded else op.failure
    attaching: dict[int, list[str]] = {}
    for item in branch:
        if isinstance(item, TxnPut | TxnSet) and item.lease:
            attaching.setdefault(item.lease, []).append(item.key)
    refused = _lease_refusal(store, attaching)
    if refused is not None:
        return refused
    failed = _version_failure(store, branch)
    if failed is not None:
        return TxnOpFailedResult(succeeded, failed[0], failed[1])
    revision = store.revision + 1
    changed = False
    read_budget = MAX_TXN_READ_BYTES
    responses: list[PutOk | SetOk | DeleteOk | RangeResult] = []
    for item in branch:
        match item:
            case (
                TxnPut(key=key, value=value, lease=lease)
                | TxnSet(key=key, value=value, lease=lease)
            ):
                new_version = store.write(key, value, revision, lease)
                changed = True
                if isinstance(item, TxnPut):
                    responses.append(PutOk(new_version, revision))
                else:
                    responses.append(SetOk(new_version, revision))
            case TxnDelete(key=key):
                removed = store.remove(key)
                changed = changed or removed
                responses.append(DeleteOk(int(removed), revision))
            case TxnDeleteRange(start=start, end=end):
                keys = list(store.keys_in(start, end))
                for key in keys:
                    store.remove(key)
                changed = changed or bool(keys)
                responses.append(DeleteOk(len(keys), revision))
            case TxnGet(key=key):
                kvs, more = store.range(key, key + "\0", 1, False, read_budget, strict=True)
                read_budget -= _read_bytes(kvs)
                responses.append(RangeResult(tuple(kvs), revision, more))
            case TxnRange(start=start, end=end, limit=limit, keys_only=keys_only):
                kvs, more = store.range(start, end, limit, keys_only, read_budget, strict=True)
                read_budget -= _read_bytes(kvs)
                responses.append(RangeResult(tuple(kvs), revision, more))
            case _:
                assert_never(item)
    if changed:
        store.set_revision(revision)
    else:
        # Nothing changed: the revision stays, and every response says so.
        revision = store.revision
        responses = [_at_revision(r, revision) for r in responses]
    return TxnResult(succeeded, tuple(responses), revision)


def _read_bytes(kvs: list[KeyValue]) -> int:
    """What ``kvs`` take of a read budget (counted as the store's range counts them)."""
    return sum(utf8_len(kv.key) + utf8_len(kv.value) + RANGE_KEY_OVERHEAD_BYTES for kv in kvs)


def _at_revision(
    response: PutOk | SetOk | DeleteOk | RangeResult, revision: int
) -> PutOk | SetOk | DeleteOk | RangeResult:
    return dataclasses.replace(response, revision=revision)
