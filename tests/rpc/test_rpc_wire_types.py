"""The table of wire types: every message registered once, on the codec's side only."""

from __future__ import annotations

import ast
import subprocess
import sys

from kvraft import kv_protocol, lease_protocol
from kvraft.raft.messages import MESSAGE_TYPES, Entry
from kvraft.rpc import codec
from kvraft.rpc.wire_types import WIRE_TYPES

KV_TYPES = (
    kv_protocol.GetOp,
    kv_protocol.PutOp,
    kv_protocol.GetOk,
    kv_protocol.PutOk,
    kv_protocol.NoKeyResult,
    kv_protocol.VersionMismatchResult,
    kv_protocol.NotLeaderResult,
    kv_protocol.StaleRequestResult,
    kv_protocol.SessionExpiredResult,
)
# The data API's, in 30..59.
DATA_TYPES = (
    kv_protocol.SetOp,
    kv_protocol.DeleteOp,
    kv_protocol.DeleteRangeOp,
    kv_protocol.RangeOp,
    kv_protocol.TxnOp,
    kv_protocol.Compare,
    kv_protocol.TxnPut,
    kv_protocol.TxnSet,
    kv_protocol.TxnDelete,
    kv_protocol.TxnDeleteRange,
    kv_protocol.TxnGet,
    kv_protocol.TxnRange,
    kv_protocol.KeyValue,
    kv_protocol.RangeResult,
    kv_protocol.SetOk,
    kv_protocol.DeleteOk,
    kv_protocol.TxnResult,
    kv_protocol.TxnOpFailedResult,
    # Watch and compaction, 54..59.
    kv_protocol.CompactOp,
    kv_protocol.CompactOk,
    kv_protocol.WatchEvent,
    kv_protocol.WatchPoll,
    kv_protocol.WatchBatch,
    kv_protocol.WatchCompactedResult,
)
# Leases (kvraft.lease_protocol): requests and the grant's answer in 48..53, the rest
# of the answers in 75..78 (54..59 were taken by watch first).
LEASE_TYPES = (
    lease_protocol.LeaseGrantOp,
    lease_protocol.LeaseRevokeOp,
    lease_protocol.LeaseKeepaliveOp,
    lease_protocol.LeaseTtlOp,
    lease_protocol.LeaseExpireOp,
    lease_protocol.LeaseGrantOk,
)
LEASE_ANSWER_TYPES = (
    lease_protocol.LeaseKeepaliveOk,
    lease_protocol.LeaseTtlResult,
    lease_protocol.LeaseNotFoundResult,
    lease_protocol.LeaseLimitResult,
)


def test_every_raft_and_kv_message_has_one_tag_in_its_range() -> None:
    tags = [tag for tag, _ in WIRE_TYPES]
    classes = [cls for _, cls in WIRE_TYPES]
    assert len(set(tags)) == len(tags) and len(set(classes)) == len(classes)
    by_class = {cls: tag for tag, cls in WIRE_TYPES}
    assert {cls: by_class[cls] for cls in (Entry, *MESSAGE_TYPES)} == {
        cls: tag for tag, cls in enumerate((Entry, *MESSAGE_TYPES), start=1)
    }
    assert all(20 <= by_class[cls] <= 29 for cls in KV_TYPES)
    assert all(30 <= by_class[cls] <= 59 for cls in DATA_TYPES)
    assert all(48 <= by_class[cls] <= 53 for cls in LEASE_TYPES)
    assert all(75 <= by_class[cls] <= 78 for cls in LEASE_ANSWER_TYPES)
    assert set(classes) == {
        Entry,
        *MESSAGE_TYPES,
        *KV_TYPES,
        *DATA_TYPES,
        *LEASE_TYPES,
        *LEASE_ANSWER_TYPES,
    }


def test_importing_the_codec_registers_the_whole_table() -> None:
    for tag, cls in WIRE_TYPES:
        assert codec._BY_TAG[tag] is cls and codec._TAG_OF[cls] == tag


def test_importing_the_codec_loads_no_transport() -> None:
    """``kvraft.rpc`` imports none of its modules eagerly: encoding needs no event loop."""
    code = (
        "import sys, kvraft.rpc.codec, kvraft.rpc.framing; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('asyncio', 'socket', 'selectors', 'ssl', 'uvloop') or m.startswith('kvraft.rpc.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = ast.literal_eval(out.stdout.strip())
    assert loaded == ["kvraft.rpc.codec", "kvraft.rpc.framing", "kvraft.rpc.wire_types"]
