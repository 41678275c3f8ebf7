"""Every typed message the wire carries, with its tag: the one table of tags.

The message classes are plain frozen dataclasses defined where they mean
something: Raft's in :mod:`kvraft.raft.messages`, the key-value service's in
:mod:`kvraft.kv_protocol`. Neither module knows the codec: the consensus core
must stay sans-I/O down to its imports (importing it must not load msgpack,
asyncio or sockets), and the service's protocol is shared by client and
server. So the wire registration lives here, on the codec's side, the way
etcd keeps its wire types in ``raftpb``. :mod:`kvraft.rpc.codec` registers
this table when it is imported: a process that can decode anything knows
every tag, with no import to remember.

Tag ranges: 1..19 Raft, 20..29 and 30..59 the key-value service (30..59:
the data API's commands, transaction parts and results, 54..59 watch and
compaction; 48..53 and 75..89 leases: :mod:`kvraft.lease_protocol`), 100..127
free for tests.
A tag is forever: log entries are stored as their command's wire encoding,
so renumbering a command would change what a data dir's log means.
"""

from __future__ import annotations

from typing import Any

from kvraft.kv_protocol import (
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
    NotLeaderResult,
    PutOk,
    PutOp,
    RangeOp,
    RangeResult,
    SessionExpiredResult,
    SetOk,
    SetOp,
    StaleRequestResult,
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
    WatchBatch,
    WatchCompactedResult,
    WatchEvent,
    WatchPoll,
)
from kvraft.lease_protocol import (
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
from kvraft.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    InstallSnapshotReply,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)

WIRE_TYPES: tuple[tuple[int, type[Any]], ...] = (
    # Raft (kvraft.raft.messages)
    (1, Entry),
    (2, RequestVote),
    (3, RequestVoteReply),
    (4, AppendEntries),
    (5, AppendEntriesReply),
    (6, InstallSnapshot),
    (7, InstallSnapshotReply),
    (8, TimeoutNow),
    # The key-value service (kvraft.kv_protocol)
    (20, GetOp),
    (21, PutOp),
    (22, GetOk),
    (23, PutOk),
    (24, NoKeyResult),
    (25, VersionMismatchResult),
    (26, NotLeaderResult),
    (27, StaleRequestResult),
    (28, SessionExpiredResult),
    # The data API (kvraft.kv_protocol): commands, txn parts, results
    (30, SetOp),
    (31, DeleteOp),
    (32, DeleteRangeOp),
    (33, RangeOp),
    (34, TxnOp),
    (35, Compare),
    (36, TxnPut),
    (37, TxnSet),
    (38, TxnDelete),
    (39, TxnDeleteRange),
    (40, TxnGet),
    (41, TxnRange),
    (42, KeyValue),
    (43, RangeResult),
    (44, SetOk),
    (45, DeleteOk),
    (46, TxnResult),
    (47, TxnOpFailedResult),
    # Leases (kvraft.lease_protocol): 48..53, then 75..89
    (48, LeaseGrantOp),
    (49, LeaseRevokeOp),
    (50, LeaseKeepaliveOp),
    (51, LeaseTtlOp),
    (52, LeaseExpireOp),
    (53, LeaseGrantOk),
    # Watch and compaction (kvraft.kv_protocol; 54..59)
    (54, CompactOp),
    (55, CompactOk),
    (56, WatchEvent),
    (57, WatchPoll),
    (58, WatchBatch),
    (59, WatchCompactedResult),
    # Leases, continued
    (75, LeaseKeepaliveOk),
    (76, LeaseTtlResult),
    (77, LeaseNotFoundResult),
    (78, LeaseLimitResult),
)
