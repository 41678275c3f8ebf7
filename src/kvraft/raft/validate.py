"""Which network messages make sense at all, before any Raft rule looks at them.

Seam: the codec guarantees every field has the right *type*; this module checks
the *values* a correct peer could send (addressed to us by a known peer, no
negative indexes, AppendEntries entries contiguous with terms that never
decrease and never exceed the sender's term). The core ignores anything else,
so ``step`` never raises on network input.
"""

from __future__ import annotations

from kvraft.raft.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVote,
)


def well_formed(msg: Message, node_id: int, peers: tuple[int, ...]) -> bool:
    """Whether ``msg`` is addressed to ``node_id`` by one of ``peers`` and its values make sense."""
    if not isinstance(msg, MESSAGE_TYPES):
        return False
    if msg.dst != node_id or msg.src == node_id or msg.src not in peers or msg.term < 0:
        return False
    match msg:
        case RequestVote():
            return msg.last_log_index >= 0 and msg.last_log_term >= 0
        case AppendEntries():
            return _entries_well_formed(msg)
        case AppendEntriesReply():
            return min(msg.match_index, msg.conflict_index, msg.conflict_term) >= 0
        case InstallSnapshot():
            return (
                msg.last_included_index >= 1
                and 1 <= msg.last_included_term <= msg.term
                and msg.offset >= 0
            )
        case InstallSnapshotReply():
            return msg.last_included_index >= 0 and msg.next_offset >= 0
        case _:
            return True


def _entries_well_formed(msg: AppendEntries) -> bool:
    if min(msg.prev_log_index, msg.prev_log_term, msg.leader_commit) < 0:
        return False
    # Index 0 is the sentinel of term 0; every real entry has a term >= 1.
    if msg.prev_log_term > msg.term or (msg.prev_log_index == 0) != (msg.prev_log_term == 0):
        return False
    index, term = msg.prev_log_index, msg.prev_log_term
    for entry in msg.entries:
        if entry.index != index + 1 or not max(term, 1) <= entry.term <= msg.term:
            return False
        index, term = entry.index, entry.term
    return True
