"""Which network messages make sense at all, before any Raft rule looks at them.

Seam: the codec guarantees every field has the right *type*; this module checks
the *values* a correct peer could send (addressed to us by another node with a valid id, no
negative indexes, every term, index, commit index, offset and read round at most
``MAX_RAFT_INT``, AppendEntries entries contiguous with terms that never
decrease and never exceed the sender's term). The core ignores anything else,
so ``step`` never raises on network input.
"""

from __future__ import annotations

from kvraft.raft.membership import MAX_MEMBER_ID
from kvraft.raft.messages import (
    MAX_RAFT_INT,
    MESSAGE_TYPES,
    AppendEntries,
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVote,
)


def well_formed(msg: Message, node_id: int) -> bool:
    """Whether ``msg`` is addressed to ``node_id`` by another node and its values make sense.

    Whether the sender is a member is the core's question (the configuration
    changes; see ``RaftCore._from_member``), not this one.
    """
    if not isinstance(msg, MESSAGE_TYPES):
        return False
    if msg.dst != node_id or msg.src == node_id or not 0 <= msg.src <= MAX_MEMBER_ID:
        return False
    if not _in_range(msg.term):
        return False
    match msg:
        case RequestVote():
            return _in_range(msg.last_log_index, msg.last_log_term)
        case AppendEntries():
            return _entries_well_formed(msg)
        case AppendEntriesReply():
            return _in_range(msg.match_index, msg.conflict_index, msg.conflict_term, msg.read_round)
        case InstallSnapshot():
            return (
                _in_range(msg.last_included_index, msg.offset)
                and msg.last_included_index >= 1
                and 1 <= msg.last_included_term <= msg.term
            )
        case InstallSnapshotReply():
            return _in_range(msg.last_included_index, msg.next_offset)
        case _:
            return True


def _in_range(*values: int) -> bool:
    """Whether every value is in ``0..MAX_RAFT_INT`` (see MAX_RAFT_INT for why)."""
    return all(0 <= value <= MAX_RAFT_INT for value in values)


def _entries_well_formed(msg: AppendEntries) -> bool:
    if not _in_range(msg.prev_log_index, msg.prev_log_term, msg.leader_commit, msg.read_round):
        return False
    # Index 0 is the sentinel of term 0; every real entry has a term >= 1.
    if msg.prev_log_term > msg.term or (msg.prev_log_index == 0) != (msg.prev_log_term == 0):
        return False
    index, term = msg.prev_log_index, msg.prev_log_term
    for entry in msg.entries:
        if entry.index != index + 1 or not max(term, 1) <= entry.term <= msg.term:
            return False
        if entry.index > MAX_RAFT_INT:
            return False
        index, term = entry.index, entry.term
    return True
