"""Raft's messages, one frozen class each, named as in the paper (extended version, fig. 2).

Every message carries ``src`` and ``dst`` (peer ids) and the sender's ``term``.
They travel as one-way notifications (method ``"raft"``); a reply is a message
of its own. This module imports nothing but the standard library, so the core
stays sans-I/O down to its imports; the wire registration of these classes
(tags 1..8, 1..19 reserved for Raft) is on the codec's side, in
:mod:`kvraft.rpc.wire_types`.

Build them with keyword arguments: ``RequestVote(2, 1, 2, 0, 0, False)`` says
nothing without the class open (``tests/raft/test_message_style.py`` checks).
They are not ``kw_only`` because the codec builds them from a decoded tuple of
fields, positionally, on the path every log entry takes.
"""

from __future__ import annotations

from dataclasses import dataclass

# The largest term, index, commit index or snapshot offset a message may carry
# (and a node may reach). Storage keeps them as SQLite's signed 64-bit integers
# and msgpack carries at most 64 bits: a bound of 2^62 leaves every sum the
# code forms from them (term + 1 at a campaign, index + 1 at an append, an
# offset plus a chunk's length) far inside that range, so no input from the
# network can make a later write overflow. Enforced on input by
# ``validate.well_formed``, on a node's own term by ``RaftCore`` (it refuses to
# campaign past it), and on writes by ``SqliteStorage``.
MAX_RAFT_INT = 2**62


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``command`` is None for the no-op a new leader appends."""

    term: int
    index: int
    command: bytes | None


@dataclass(frozen=True, slots=True)
class RequestVote:
    """A candidate asks for a vote; with ``pre_vote`` only asks whether it would win."""

    src: int
    dst: int
    term: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class RequestVoteReply:
    src: int
    dst: int
    term: int
    vote_granted: bool
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Entries (maybe none: a heartbeat) following ``prev_log_index``."""

    src: int
    dst: int
    term: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    # The latest read-index round the leader started (kvraft.raft.read_index);
    # 0 before its first. Echoed in the reply.
    read_round: int = 0


@dataclass(frozen=True, slots=True)
class AppendEntriesReply:
    """On success ``match_index`` is the last index known to match the leader.

    Success or not, a reply in the leader's term confirms that the follower
    still follows it: ``read_round`` counts toward a read-index round either way.

    On failure ``conflict_index``/``conflict_term`` drive fast backtracking
    (the follower's first index of the conflicting term, or its log length).
    """

    src: int
    dst: int
    term: int
    success: bool
    match_index: int
    conflict_index: int
    conflict_term: int
    # The read_round of the AppendEntries this answers (kvraft.raft.read_index).
    read_round: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One chunk of the leader's snapshot, at byte ``offset``; ``done`` on the last.

    ``checksum`` is the CRC32 of the whole snapshot's data (every chunk carries
    it): the follower checks the assembled bytes against it before the core
    installs them, so a chunk damaged in transit, or chunks of two snapshots
    spliced together, are refused and the transfer restarts from offset 0
    instead of being persisted and failing at every restart.
    """

    src: int
    dst: int
    term: int
    last_included_index: int
    last_included_term: int
    offset: int
    data: bytes
    done: bool
    checksum: int


@dataclass(frozen=True, slots=True)
class InstallSnapshotReply:
    """``next_offset`` is the byte the follower wants next (0 to restart)."""

    src: int
    dst: int
    term: int
    last_included_index: int
    next_offset: int
    done: bool


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the receiver campaigns at once, skipping pre-vote.

    Thesis §3.10. A leader transferring its leadership (``RaftCore.transfer_leadership``;
    the rules are :mod:`kvraft.raft.transfer`'s) stops taking proposals,
    brings the target's log up to date, then sends this. A follower that
    receives it from the leader it follows, in its term, starts an election at
    once (``RaftCore._handle_timeout_now``); from anyone else, or in another
    term, it is ignored. The resulting vote requests carry no mark, so voters
    still in their lease (check-quorum) refuse them until it lapses; the
    transferring leader alone knows the candidate and sets its lease aside.
    """

    src: int
    dst: int
    term: int


Message = (
    RequestVote
    | RequestVoteReply
    | AppendEntries
    | AppendEntriesReply
    | InstallSnapshot
    | InstallSnapshotReply
    | TimeoutNow
)
MESSAGE_TYPES = (
    RequestVote,
    RequestVoteReply,
    AppendEntries,
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    TimeoutNow,
)
