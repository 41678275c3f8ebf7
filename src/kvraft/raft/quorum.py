"""Majority arithmetic: the commit index a quorum vouches for, and election tallies.

Seam: pure functions of numbers, with naive twins in the tests (the commit
index is the median-like order statistic of the match indexes).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voters: int) -> int:
    """The smallest number of voters that is more than half of ``voters``."""
    return voters // 2 + 1


def commit_index(match_indexes: Collection[int]) -> int:
    """The largest index that a majority of ``match_indexes`` has reached.

    Raft §5.3: an index is replicated on a majority when at least
    ``majority(n)`` match indexes are at or above it; sorted from the highest,
    that is the ``majority(n)``-th value.
    """
    ordered = sorted(match_indexes, reverse=True)
    return ordered[majority(len(ordered)) - 1]


def vote_result(votes: Mapping[int, bool], voters: int) -> VoteResult:
    """Whether ``votes`` (voter -> granted) among ``voters`` members won, lost, or may still win."""
    need = majority(voters)
    granted = sum(1 for granted in votes.values() if granted)
    if granted >= need:
        return VoteResult.WON
    rejected = len(votes) - granted
    if voters - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def is_quorum(voters: Collection[int], acked: Collection[int]) -> bool:
    """Whether the members in ``acked`` include a majority of ``voters``: THE quorum test.

    Every decision that needs "a majority of the configuration" goes through
    here or :func:`voters_commit_index`: check-quorum, and a read index's
    round of heartbeat acknowledgements. Only voters count (learners and
    non-members in ``acked`` are ignored), and the caller includes itself in
    ``acked`` only if it counts (a leader that is removing itself does not).
    """
    voting = set(voters)
    return len(voting.intersection(acked)) >= majority(len(voting))


def voters_commit_index(voters: Collection[int], match_index: Mapping[int, int]) -> int:
    """The largest index a majority of ``voters`` holds (a voter not in ``match_index``: 0).

    Learners' match indexes may be in ``match_index``: they do not count.
    """
    return commit_index([match_index.get(voter, 0) for voter in voters])
