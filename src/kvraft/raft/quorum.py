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
