"""The in-memory log's representation: what it costs the garbage collector.

Reference: benchmarks/results/memory-1m.md (full collections walked every
log entry held since the last snapshot: 67-71 ms for 350,000 of them)
"""

from __future__ import annotations

import gc

from kvraft.raft.log import RaftLog
from kvraft.raft.messages import Entry

ENTRIES = 20_000


def _tracked_objects_after_collection() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_entries_held_in_the_log_are_not_tracked_by_the_garbage_collector() -> None:
    """A log of 20,000 entries adds a handful of tracked objects, not one per entry."""
    log = RaftLog(0, 0, [])
    before = _tracked_objects_after_collection()
    for index in range(1, ENTRIES + 1):
        log.append(Entry(term=1, index=index, command=b"put %d" % index))
    after = _tracked_objects_after_collection()
    assert len(log) == ENTRIES
    assert after - before < ENTRIES // 100


def test_entries_handed_out_are_the_ones_appended() -> None:
    """Built on the way out: the same terms, indexes and commands, in order."""
    appended = [Entry(term=1 + i // 3, index=i, command=b"c%d" % i) for i in range(1, 11)]
    appended[4] = Entry(term=appended[4].term, index=5, command=None)  # a leader's no-op
    log = RaftLog(0, 0, appended[:5])
    for entry in appended[5:]:
        log.append(entry)
    assert log.all_entries() == appended
    assert log.between(3, 7) == appended[2:7]
    assert log.batch(9, 10, 1 << 20) == tuple(appended[8:])
    assert log.entry(5) == appended[4] and log.entry(11) is None
    assert [log.term(i) for i in range(0, 12)] == [0, *(e.term for e in appended), None]
    log.compact(4, appended[3].term)
    assert log.all_entries() == appended[4:] and log.entry(4) is None
