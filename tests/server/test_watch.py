"""The watch history, the RSM's recording of events, and the watch.poll RPC's bounds.

In-process: the RSM applies entries handed to it (no Raft), so each test
controls exactly which revisions exist.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from kvraft.errors import Busy, InvalidArgument
from kvraft.kv_protocol import (
    MAX_WATCH_EVENTS,
    MAX_WATCH_WAIT_S,
    WATCH_EVENT_OVERHEAD_BYTES,
    CompactOk,
    CompactOp,
    Compare,
    DeleteOp,
    DeleteRangeOp,
    GetOp,
    KeyValue,
    PutOp,
    RangeOp,
    SetOp,
    TxnDelete,
    TxnGet,
    TxnOp,
    TxnSet,
    WatchBatch,
    WatchCompactedResult,
    WatchEvent,
    WatchPoll,
    check_op,
    check_watch_poll,
    watch_event_bytes,
)
from kvraft.raft.messages import Entry
from kvraft.raft.ready import Snapshot
from kvraft.server.commands import decode_command, encode_command
from kvraft.server.kvstore import KVStore
from kvraft.server.options import ServerOptions
from kvraft.server.rsm import RSM
from kvraft.server.watch import WatchPolls
from kvraft.server.watch_history import MAX_SCAN_REVISIONS, Change, WatchHistory, change_bytes

from .node_support import single_node_options


def put_event(key: str, value: str, revision: int) -> WatchEvent:
    return WatchEvent("put", KeyValue(key, value, 1, revision, revision, 0), None, revision)


def created(key: str, value: str, revision: int) -> Change:
    """The journal's change for a new key: no entry before, version 1 after."""
    return (key, None, (value, 1, revision, revision, 0))


def fill(history: WatchHistory, revisions: range, key: str = "k", value: str = "v") -> None:
    for r in revisions:
        history.record(r, [created(key, value, r)])


def read_all(history: WatchHistory, next_revision: int = 1, **kw: Any) -> list[WatchEvent]:
    args: dict[str, Any] = {"max_events": MAX_WATCH_EVENTS, "max_bytes": 1 << 30, "prev_kv": True}
    args.update(kw)
    events, _, _ = history.read("", "", next_revision, 0, **args)
    return events


# ---------------------------------------------------------------------- history


def test_the_history_keeps_max_revisions_and_drops_the_oldest_one_past_it() -> None:
    history = WatchHistory(max_revisions=5, max_bytes=1 << 20)
    fill(history, range(1, 6))
    assert len(history) == 5 and history.first_revision == 1  # at the bound: all kept
    fill(history, range(6, 7))
    assert len(history) == 5 and history.first_revision == 2  # one past: the oldest goes
    assert [e.revision for e in read_all(history, 2)] == [2, 3, 4, 5, 6]


def test_the_history_byte_bound_at_the_limit_and_one_past() -> None:
    size = watch_event_bytes(put_event("k", "v", 1))
    assert size == WATCH_EVENT_OVERHEAD_BYTES + 2 == change_bytes(created("k", "v", 1))
    # A change's previous value counts too (it is kept for prev_kv).
    assert change_bytes(("k", ("old", 1, 1, 1, 0), ("v", 2, 1, 2, 0))) == size + 3
    history = WatchHistory(max_revisions=100, max_bytes=3 * size)
    fill(history, range(1, 4))
    assert len(history) == 3 and history.bytes == 3 * size and history.first_revision == 1
    fill(history, range(4, 5))
    assert len(history) == 3 and history.bytes == 3 * size and history.first_revision == 2


def test_a_revision_over_the_byte_bound_alone_is_dropped_and_moves_the_start_past_it() -> None:
    history = WatchHistory(max_revisions=100, max_bytes=200)
    fill(history, range(1, 2))
    history.record(2, [created("k", "x" * 500, 2)])
    assert len(history) == 0 and history.bytes == 0 and history.first_revision == 3


def test_compact_drops_below_its_revision_and_never_moves_the_start_back() -> None:
    history = WatchHistory(max_revisions=100, max_bytes=1 << 20)
    fill(history, range(1, 11))
    history.compact(6)
    assert history.first_revision == 6 and len(history) == 5
    history.compact(3)
    assert history.first_revision == 6 and len(history) == 5
    history.reset(20)
    assert history.first_revision == 20 and len(history) == 0 and history.bytes == 0


def test_read_filters_by_range_and_drops_prev_kv_unless_asked() -> None:
    history = WatchHistory(max_revisions=100, max_bytes=1 << 20)
    prev = KeyValue("a/1", "old", 1, 1, 1, 0)
    history.record(1, [("a/1", ("old", 1, 1, 1, 0), ("new", 2, 1, 1, 0))])
    history.record(2, [created("b", "v", 2)])
    events, cursor, skip = history.read(
        "a/", "a0", 1, 0, max_events=10, max_bytes=1 << 20, prev_kv=False
    )
    assert [e.kv.key for e in events] == ["a/1"] and events[0].prev_kv is None
    assert (cursor, skip) == (3, 0)  # past everything scanned, the non-matching too
    events, _, _ = history.read("a/", "a0", 1, 0, max_events=10, max_bytes=1 << 20, prev_kv=True)
    assert events[0].prev_kv == prev


def test_a_revision_split_across_reads_resumes_with_skip_without_gap_or_duplicate() -> None:
    history = WatchHistory(max_revisions=100, max_bytes=1 << 20)
    history.record(1, [created(f"k{i}", "v", 1) for i in range(5)])
    history.record(2, [created("z", "v", 2)])
    seen: list[str] = []
    cursor, skip = 1, 0
    while cursor <= 2:
        events, cursor, skip = history.read(
            "", "", cursor, skip, max_events=2, max_bytes=1 << 20, prev_kv=False
        )
        assert events
        seen += [e.kv.key for e in events]
    assert seen == ["k0", "k1", "k2", "k3", "k4", "z"]


def test_read_bytes_bound_at_the_limit_and_one_past_but_always_one_event() -> None:
    history = WatchHistory(max_revisions=100, max_bytes=1 << 20)
    fill(history, range(1, 4))
    size = watch_event_bytes(put_event("k", "v", 1))
    assert len(read_all(history, max_bytes=2 * size)) == 2
    assert len(read_all(history, max_bytes=2 * size - 1)) == 1
    assert len(read_all(history, max_bytes=1)) == 1  # one event always


def test_a_read_scans_a_bounded_number_of_revisions() -> None:
    history = WatchHistory(max_revisions=MAX_SCAN_REVISIONS + 10, max_bytes=1 << 30)
    fill(history, range(1, MAX_SCAN_REVISIONS + 6))
    events, cursor, skip = history.read(
        "other", "other\0", 1, 0, max_events=10, max_bytes=1 << 20, prev_kv=False
    )
    assert events == [] and (cursor, skip) == (MAX_SCAN_REVISIONS + 1, 0)


# -------------------------------------------------------------- the RSM records


class Applier:
    """An RSM fed entries directly, one command per index."""

    def __init__(self, **kw: Any) -> None:
        self.rsm = RSM(1, KVStore(), op_timeout_s=5.0, **kw)
        self.index = 0
        self.rid = 0

    def apply(self, make: Any) -> None:
        self.index += 1
        self.rid += 1
        op = make(self.rid)
        self.rsm.apply(Entry(term=1, index=self.index, command=encode_command(op)))

    def events(self, next_revision: int = 1) -> list[WatchEvent]:
        return read_all(self.rsm.history, next_revision)


def test_the_rsm_records_one_revision_per_write_with_its_events_for_every_command_kind() -> None:
    a = Applier()
    a.apply(lambda r: SetOp("a", "1", "c", r, r))  # rev 1
    a.apply(lambda r: PutOp("a", "2", 1, "c", r, r))  # rev 2
    a.apply(lambda r: SetOp("b", "x", "c", r, r))  # rev 3
    a.apply(lambda r: DeleteOp("b", 1, "c", r, r))  # rev 4
    a.apply(lambda r: SetOp("p/1", "x", "c", r, r))  # rev 5
    a.apply(lambda r: SetOp("p/2", "y", "c", r, r))  # rev 6
    a.apply(lambda r: DeleteRangeOp("p/", "p0", "c", r, r))  # rev 7: two events
    a.apply(  # rev 8: a txn's events together, in its order
        lambda r: TxnOp(
            (Compare("a", "version", "==", 2),),
            (TxnSet("t1", "1"), TxnDelete("a"), TxnGet("t1")),
            (),
            "c",
            r,
            r,
        )
    )
    # Nothing changed: no revision, no events.
    a.apply(lambda r: GetOp("a", "c", r, r))
    a.apply(lambda r: RangeOp("", "", 0, False, "c", r, r))
    a.apply(lambda r: PutOp("zz", "v", 5, "c", r, r))  # NoKey
    a.apply(lambda r: DeleteRangeOp("nothing/", "nothing0", "c", r, r))
    events = a.events()
    assert a.rsm.store.revision == 8
    got = [(e.revision, e.type, e.kv.key, e.kv.value) for e in events]
    assert got == [
        (1, "put", "a", "1"),
        (2, "put", "a", "2"),
        (3, "put", "b", "x"),
        (4, "delete", "b", ""),
        (5, "put", "p/1", "x"),
        (6, "put", "p/2", "y"),
        (7, "delete", "p/1", ""),
        (7, "delete", "p/2", ""),
        (8, "put", "t1", "1"),
        (8, "delete", "a", ""),
    ]
    assert events[1].kv == KeyValue("a", "2", 2, 1, 2, 0)
    assert events[1].prev_kv == KeyValue("a", "1", 1, 1, 1, 0)
    assert events[0].prev_kv is None  # a new key has no previous one
    assert events[3].kv.mod_revision == 4 and events[3].prev_kv is not None
    assert events[3].prev_kv.value == "x"


def test_compact_through_the_log_drops_history_and_is_clamped_to_the_next_revision() -> None:
    a = Applier()
    for _ in range(5):
        a.apply(lambda r: SetOp("k", "v", "c", r, r))
    a.apply(lambda r: CompactOp(3, "c", r, r))
    assert a.rsm.history.first_revision == 3 and len(a.rsm.history) == 3
    assert a.rsm.store.revision == 5  # a compact changes no key and makes no revision
    a.apply(lambda r: CompactOp(1000, "c", r, r))
    assert a.rsm.history.first_revision == 6 and len(a.rsm.history) == 0


def test_compact_op_is_checked_and_round_trips_as_a_command() -> None:
    op = CompactOp(7, "c", 1, 1)
    assert decode_command(encode_command(op)) == op
    with pytest.raises(InvalidArgument):
        check_op(CompactOp(-1, "c", 1, 1))
    with pytest.raises(InvalidArgument):
        check_op(CompactOp(True, "c", 1, 1))  # type: ignore[arg-type]
    from kvraft.server.commands import apply_command

    store = KVStore()
    assert apply_command(store, CompactOp(9, "c", 1, 1)) == CompactOk(1)


def test_a_snapshot_restore_resets_the_history_to_start_after_its_revision() -> None:
    a = Applier(history_revisions=100)
    for _ in range(4):
        a.apply(lambda r: SetOp("k", "v", "c", r, r))
    data = a.rsm.capture_snapshot()()
    b = Applier()
    b.rsm.restore(Snapshot(index=4, term=1, data=data))
    assert b.rsm.history.first_revision == 5 and len(b.rsm.history) == 0
    result = asyncio.run(WatchPolls(b.rsm).poll(poll(next_revision=2, wait_s=0)))
    assert result == WatchCompactedResult(5)


def test_history_flags_bound_the_rsm() -> None:
    a = Applier(history_revisions=2)
    for _ in range(3):
        a.apply(lambda r: SetOp("k", "v", "c", r, r))
    assert a.rsm.history.first_revision == 2 and len(a.rsm.history) == 2


# ---------------------------------------------------------------- watch.poll


def poll(**kw: Any) -> WatchPoll:
    args: dict[str, Any] = {
        "start": "",
        "end": "",
        "next_revision": 1,
        "skip": 0,
        "max_events": 100,
        "prev_kv": False,
        "wait_s": 0.0,
    }
    args.update(kw)
    return WatchPoll(**args)


def test_poll_checks_its_bounds_at_the_limit_and_one_past() -> None:
    check_watch_poll(poll(max_events=MAX_WATCH_EVENTS, wait_s=MAX_WATCH_WAIT_S))
    check_watch_poll(poll(max_events=1))
    for bad in (
        poll(max_events=MAX_WATCH_EVENTS + 1),
        poll(max_events=0),
        poll(wait_s=MAX_WATCH_WAIT_S + 0.001),
        poll(wait_s=-1.0),
        poll(next_revision=-1),
        poll(skip=-1),
        poll(prev_kv=1),
        poll(start="b", end="a"),
    ):
        with pytest.raises(InvalidArgument):
            check_watch_poll(bad)


def test_a_poll_answers_at_once_with_events_and_max_events_bounds_it() -> None:
    a = Applier()
    for _ in range(5):
        a.apply(lambda r: SetOp("k", "v", "c", r, r))
    result = asyncio.run(WatchPolls(a.rsm).poll(poll(max_events=3, wait_s=10.0)))
    assert isinstance(result, WatchBatch)
    assert [e.revision for e in result.events] == [1, 2, 3]
    assert (result.next_revision, result.skip, result.revision) == (4, 0, 5)


def test_a_poll_below_the_history_is_compacted() -> None:
    a = Applier(history_revisions=2)
    for _ in range(4):
        a.apply(lambda r: SetOp("k", "v", "c", r, r))
    polls = WatchPolls(a.rsm)
    assert asyncio.run(polls.poll(poll(next_revision=2))) == WatchCompactedResult(3)
    assert isinstance(asyncio.run(polls.poll(poll(next_revision=3))), WatchBatch)


def test_a_waiting_poll_wakes_on_a_new_revision_and_from_now_starts_past_the_present() -> None:
    a = Applier()
    a.apply(lambda r: SetOp("old", "v", "c", r, r))

    async def scenario() -> WatchBatch | WatchCompactedResult:
        polls = WatchPolls(a.rsm)
        task = asyncio.ensure_future(polls.poll(poll(next_revision=0, wait_s=20.0)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert polls.waiting == 1 and not task.done()
        a.apply(lambda r: SetOp("new", "v", "c", r, r))
        result = await asyncio.wait_for(task, 5.0)
        assert polls.waiting == 0
        return result

    result = asyncio.run(scenario())
    assert isinstance(result, WatchBatch)
    assert [e.kv.key for e in result.events] == ["new"]


def test_an_empty_poll_answers_after_its_wait() -> None:
    a = Applier()

    async def scenario() -> WatchBatch | WatchCompactedResult:
        return await WatchPolls(a.rsm).poll(poll(wait_s=0.05))

    result = asyncio.run(scenario())
    assert result == WatchBatch((), 1, 0, 0)


def test_waiting_polls_are_capped_at_the_limit_and_one_past_is_busy() -> None:
    a = Applier()

    async def scenario() -> None:
        polls = WatchPolls(a.rsm, max_waiting=2)
        tasks = [asyncio.ensure_future(polls.poll(poll(wait_s=20.0))) for _ in range(2)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert polls.waiting == 2
        with pytest.raises(Busy, match="2 watch polls waiting"):
            await polls.poll(poll(wait_s=20.0))
        assert polls.refused == 1
        # A poll with events to answer needs no slot.
        a.apply(lambda r: SetOp("k", "v", "c", r, r))
        for task in tasks:
            assert isinstance(await asyncio.wait_for(task, 5.0), WatchBatch)
        assert polls.waiting == 0
        result = await polls.poll(poll(wait_s=20.0))
        assert isinstance(result, WatchBatch) and len(result.events) == 1

    asyncio.run(scenario())


def test_a_cancelled_poll_frees_its_slot() -> None:
    a = Applier()

    async def scenario() -> None:
        polls = WatchPolls(a.rsm, max_waiting=1)
        task = asyncio.ensure_future(polls.poll(poll(wait_s=20.0)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert polls.waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert polls.waiting == 0

    asyncio.run(scenario())


def test_the_history_options_take_one_and_refuse_zero(tmp_path: Path) -> None:
    common = single_node_options(tmp_path)
    ServerOptions(**common, history_revisions=1, history_bytes=1)
    for bad in ({"history_revisions": 0}, {"history_bytes": 0}):
        with pytest.raises(ValueError, match="--history-revisions and --history-bytes"):
            ServerOptions(**common, **bad)
    with pytest.raises(ValueError):
        WatchHistory(max_revisions=0, max_bytes=1)


def test_replaying_the_events_of_random_commands_rebuilds_the_store() -> None:
    """Every change of every command kind is an event: replayed in order they give the store."""
    rng = random.Random(12)
    a = Applier()
    keys = [f"k{i}" for i in range(6)]
    for _ in range(400):
        key = rng.choice(keys)
        version = a.rsm.store.version(key)
        choice = rng.randrange(6)
        if choice == 0:
            a.apply(lambda r, k=key: SetOp(k, str(rng.random()), "c", r, r))
        elif choice == 1:
            a.apply(lambda r, k=key, v=version: PutOp(k, "p", v, "c", r, r))
        elif choice == 2:
            a.apply(lambda r, k=key, v=version: DeleteOp(k, v, "c", r, r))
        elif choice == 3:
            a.apply(lambda r, k=key: DeleteRangeOp(k, "k9", "c", r, r))
        elif choice == 4:
            other = rng.choice([k for k in keys if k != key])
            branch = (TxnSet(key, "t"), TxnDelete(other))
            a.apply(lambda r, b=branch: TxnOp((), b, (), "c", r, r))
        else:
            a.apply(lambda r: RangeOp("", "", 0, False, "c", r, r))
    replayed: dict[str, KeyValue] = {}
    last = 0
    for event in read_all(a.rsm.history):
        assert event.revision >= last
        last = event.revision
        if event.type == "put":
            assert event.kv.mod_revision == event.revision
            replayed[event.kv.key] = event.kv
        else:
            assert event.prev_kv is not None and event.prev_kv.key in replayed
            del replayed[event.kv.key]
    assert last == a.rsm.store.revision > 100
    store = a.rsm.store
    expected = {k: KeyValue(k, *store.entry(k)) for k in store}  # type: ignore[misc]
    assert replayed == expected
