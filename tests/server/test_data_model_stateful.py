"""The data API's state machine against a reference model: every command, every result.

A hypothesis rule-based machine drives the real :class:`Sessions` +
:class:`KVStore` (``Sessions.apply``, as the RSM does) with random sequences
of every command (get, put, set, delete, delete_range, range, txn) from two
clients, resends of earlier requests among them, and snapshot/restore in the
middle; a plain-dict model written from the contract (docs/data-model.md),
not from the code, predicts each result. A resent write must get its first
result back and apply once; a resent read is executed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvraft.kv_protocol import (
    Compare,
    DeleteOk,
    DeleteOp,
    DeleteRangeOp,
    GetOk,
    GetOp,
    KeyValue,
    NoKeyResult,
    PutOk,
    PutOp,
    RangeOp,
    RangeResult,
    SetOk,
    SetOp,
    TxnDelete,
    TxnDeleteRange,
    TxnGet,
    TxnOp,
    TxnOpFailedResult,
    TxnPut,
    TxnRange,
    TxnResult,
    TxnSet,
    VersionMismatchResult,
    prefix_end,
    txn_error,
)
from kvraft.server import state_snapshot
from kvraft.server.kvstore import KVStore
from kvraft.server.sessions import Sessions

KEYS = ["a", "ab", "b", "ba", "c"]
PREFIXES = ["", "a", "b", "c", "z"]
keys = st.sampled_from(KEYS)
values = st.sampled_from(["", "x", "yy", "é"])
versions = st.integers(0, 4)
prefixes = st.sampled_from(PREFIXES)


@dataclass
class Model:
    """The contract, written plainly: key -> [value, version, create, mod]; one revision."""

    data: dict[str, list[Any]] = field(default_factory=dict)
    revision: int = 0

    def version(self, key: str) -> int:
        return self.data[key][1] if key in self.data else 0

    def write(self, key: str, value: str, revision: int) -> int:
        if key in self.data:
            entry = self.data[key]
            entry[0], entry[1], entry[3] = value, entry[1] + 1, revision
        else:
            self.data[key] = [value, 1, revision, revision]
        return int(self.data[key][1])

    def kvs(self, start: str, end: str, limit: int, keys_only: bool) -> tuple[list[KeyValue], bool]:
        chosen = sorted(k for k in self.data if k >= start and (end == "" or k < end))
        more = bool(limit) and len(chosen) > limit
        if limit:
            chosen = chosen[:limit]
        out = []
        for k in chosen:
            v, ver, c, m = self.data[k]
            out.append(KeyValue(k, "" if keys_only else v, ver, c, m, 0))
        return out, more

    def holds(self, cmp: Compare) -> bool:
        entry = self.data.get(cmp.key)
        if cmp.target == "exists":
            actual: Any = entry is not None
        elif cmp.target == "value":
            if entry is None:
                return False
            actual = entry[0]
        else:
            index = {"version": 1, "create_revision": 2, "mod_revision": 3}[cmp.target]
            actual = 0 if entry is None else entry[index]
        return {
            "==": actual == cmp.value,
            "!=": actual != cmp.value,
            "<": actual < cmp.value,
            ">": actual > cmp.value,
        }[cmp.op]

    def apply(self, op: Any) -> Any:
        match op:
            case GetOp(key=k):
                return GetOk(self.data[k][0], self.data[k][1]) if k in self.data else NoKeyResult()
            case PutOp(key=k, value=v, version=n):
                if n != self.version(k):
                    return (
                        VersionMismatchResult(self.version(k)) if k in self.data else NoKeyResult()
                    )
                self.revision += 1
                return PutOk(self.write(k, v, self.revision), self.revision)
            case SetOp(key=k, value=v):
                self.revision += 1
                return SetOk(self.write(k, v, self.revision), self.revision)
            case DeleteOp(key=k, version=n):
                if k not in self.data:
                    return NoKeyResult()
                if n != self.version(k):
                    return VersionMismatchResult(self.version(k))
                del self.data[k]
                self.revision += 1
                return DeleteOk(1, self.revision)
            case DeleteRangeOp(start=s, end=e):
                gone = [k for k in self.data if k >= s and (e == "" or k < e)]
                for k in gone:
                    del self.data[k]
                if gone:
                    self.revision += 1
                return DeleteOk(len(gone), self.revision)
            case RangeOp(start=s, end=e, limit=n, keys_only=ko):
                kvs, more = self.kvs(s, e, n, ko)
                return RangeResult(tuple(kvs), self.revision, more)
            case TxnOp():
                return self.txn(op)
        raise AssertionError(op)

    def txn(self, op: TxnOp) -> Any:
        ok = all(self.holds(c) for c in op.compare)
        branch = op.success if ok else op.failure
        for i, item in enumerate(branch):
            versioned = isinstance(item, TxnPut) or (
                isinstance(item, TxnDelete) and item.version is not None
            )
            if versioned:
                current = self.version(item.key)  # type: ignore[union-attr]
                wanted = item.version  # type: ignore[union-attr]
                if wanted != current or (isinstance(item, TxnDelete) and current == 0):
                    return TxnOpFailedResult(ok, i, current)
        rev = self.revision + 1
        changed = False
        out: list[Any] = []
        for item in branch:
            match item:
                case TxnPut(key=k, value=v):
                    out.append(PutOk(self.write(k, v, rev), rev))
                    changed = True
                case TxnSet(key=k, value=v):
                    out.append(SetOk(self.write(k, v, rev), rev))
                    changed = True
                case TxnDelete(key=k):
                    gone = self.data.pop(k, None) is not None
                    changed = changed or gone
                    out.append(DeleteOk(int(gone), rev))
                case TxnDeleteRange(start=s, end=e):
                    doomed = [k for k in self.data if k >= s and (e == "" or k < e)]
                    for k in doomed:
                        del self.data[k]
                    changed = changed or bool(doomed)
                    out.append(DeleteOk(len(doomed), rev))
                case TxnGet(key=k):
                    kvs, _ = self.kvs(k, k + "\0", 1, False)
                    out.append(RangeResult(tuple(kvs), rev, False))
                case TxnRange(start=s, end=e, limit=n, keys_only=ko):
                    kvs, more = self.kvs(s, e, n, ko)
                    out.append(RangeResult(tuple(kvs), rev, more))
        if changed:
            self.revision = rev
        else:
            out = [_with_revision(r, self.revision) for r in out]
        return TxnResult(ok, tuple(out), self.revision)


def _with_revision(result: Any, revision: int) -> Any:
    import dataclasses

    return dataclasses.replace(result, revision=revision)


compares = (
    st.builds(
        Compare,
        keys,
        st.sampled_from(["version", "create_revision", "mod_revision"]),
        st.sampled_from(["==", "!=", "<", ">"]),
        st.integers(0, 6),
    )
    | st.builds(Compare, keys, st.just("value"), st.sampled_from(["==", "!=", "<", ">"]), values)
    | st.builds(Compare, keys, st.just("exists"), st.sampled_from(["==", "!="]), st.booleans())
)
txn_ops = st.one_of(
    st.builds(TxnPut, keys, values, versions),
    st.builds(TxnSet, keys, values),
    st.builds(TxnDelete, keys, st.none() | versions),
    st.builds(TxnDeleteRange.prefix, prefixes),
    st.builds(TxnGet, keys),
    st.builds(TxnRange.prefix, prefixes, st.integers(0, 3), st.booleans()),
)
bodies = st.one_of(
    st.builds(lambda k: ("get", k), keys),
    st.builds(lambda k, v, n: ("put", k, v, n), keys, values, versions),
    st.builds(lambda k, v: ("set", k, v), keys, values),
    st.builds(lambda k, n: ("delete", k, n), keys, versions),
    st.builds(lambda p: ("delete_range", p), prefixes),
    st.builds(lambda p, n, ko: ("range", p, n, ko), prefixes, st.integers(0, 3), st.booleans()),
    st.builds(
        lambda c, s, f: ("txn", tuple(c), tuple(s), tuple(f)),
        st.lists(compares, max_size=3),
        st.lists(txn_ops, max_size=4),
        st.lists(txn_ops, max_size=3),
    ),
)


def build(body: tuple[Any, ...], client: str, rid: int, acked: int) -> Any:
    session = (client, rid, acked)
    match body:
        case ("get", k):
            return GetOp(k, *session)
        case ("put", k, v, n):
            return PutOp(k, v, n, *session)
        case ("set", k, v):
            return SetOp(k, v, *session)
        case ("delete", k, n):
            return DeleteOp(k, n, *session)
        case ("delete_range", p):
            return DeleteRangeOp(p, prefix_end(p), *session)
        case ("range", p, n, ko):
            return RangeOp(p, prefix_end(p), n, ko, *session)
        case ("txn", c, s, f):
            return TxnOp(c, s, f, *session)
    raise AssertionError(body)


class DataModelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sessions = Sessions()
        self.store = KVStore()
        self.model = Model()
        self.index = 0
        self.next_id = {"c1": 1, "c2": 1}
        # Per client: request id -> (op, first result) of its writes.
        self.sent: dict[str, dict[int, tuple[Any, Any]]] = {"c1": {}, "c2": {}}

    def _apply(self, op: Any) -> Any:
        self.index += 1
        self.sessions.advance(self.index)
        return self.sessions.apply(self.store, op, self.index)

    @rule(body=bodies, client=st.sampled_from(["c1", "c2"]))
    def command(self, body: tuple[Any, ...], client: str) -> None:
        rid = self.next_id[client]
        op = build(body, client, rid, max(1, rid - 8))
        if isinstance(op, TxnOp) and txn_error(op) is not None:
            return  # refused before the log (tested in test_data_model.py)
        self.next_id[client] = rid + 1
        expected = self.model.apply(op)
        assert self._apply(op) == expected, op
        if not isinstance(op, GetOp | RangeOp):
            self.sent[client][rid] = (op, expected)

    @rule(client=st.sampled_from(["c1", "c2"]), data=st.data())
    def resend(self, client: str, data: st.DataObject) -> None:
        """A copy of a recent write: answered with its first result, applied once."""
        recent = [r for r in self.sent[client] if r > self.next_id[client] - 8]
        if not recent:
            return
        rid = data.draw(st.sampled_from(sorted(recent)))
        op, first = self.sent[client][rid]
        assert self._apply(op) == first

    @rule()
    def snapshot_and_restore(self) -> None:
        data = state_snapshot.encoder(self.sessions.copy(), self.store.copy())()
        sessions, store = state_snapshot.decode(data, self.sessions.limits)
        assert sessions == self.sessions and store == self.store
        assert state_snapshot.encoder(sessions, store)() == data
        self.sessions, self.store = sessions, store

    @invariant()
    def store_matches_model(self) -> None:
        assert self.store.revision == self.model.revision
        assert len(self.store) == len(self.model.data)
        for key, (value, version, create, mod) in self.model.data.items():
            assert self.store.entry(key) == (value, version, create, mod, 0)
        assert self.store.data_bytes() == sum(
            len(k.encode()) + len(v[0].encode()) for k, v in self.model.data.items()
        )


TestDataModel = DataModelMachine.TestCase
TestDataModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
