"""Elections from the waiting and the asking side: the election timer and one round of votes.

Seam: :class:`~kvraft.raft.core.RaftCore` decides what an election means: when
to campaign, which term to take, what winning or losing makes of the node (a
real election after a won pre-vote, leadership, following), and whether to
grant others their votes. Here live the two pieces of state it consults:

- an :class:`ElectionTimer`, which says when a follower or candidate has waited
  long enough for a leader, and whether one was heard from recently (the lease
  that check-quorum gives a live leader against disruptive candidates);
- an :class:`Election`, alive for one round of (pre-)voting, which knows whom
  it asked for which term and what they answered.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvraft.raft import quorum
from kvraft.raft.messages import Message, RequestVote, RequestVoteReply

if TYPE_CHECKING:
    from kvraft.raft.core import RaftCore


class ElectionTimer:
    """Ticks waited for a leader, against a timeout drawn anew at each :meth:`start`."""

    def __init__(self, timeout_ticks: int, rng: random.Random) -> None:
        self.timeout_ticks = timeout_ticks
        self._rng = rng
        self.elapsed = 0
        self.randomized_timeout = 0
        self.start()

    def start(self) -> None:
        """Wait from zero for a freshly drawn timeout (a new term, role or campaign)."""
        # Raft §5.2: randomized in [timeout, 2 x timeout) so split votes resolve.
        self.elapsed = 0
        self.randomized_timeout = self.timeout_ticks + self._rng.randrange(self.timeout_ticks)

    def restart(self) -> None:
        """Wait from zero again, same timeout: the leader was heard from, or a vote granted."""
        self.elapsed = 0

    def tick(self) -> bool:
        """One tick; True once the randomized timeout is reached."""
        self.elapsed += 1
        return self.elapsed >= self.randomized_timeout

    def within_timeout(self) -> bool:
        """Whether less than one election timeout (unrandomized) passed since the wait began."""
        return self.elapsed < self.timeout_ticks


class Election:
    """One round of vote requests by a pre-candidate or candidate, alive until won or lost."""

    def __init__(self, core: RaftCore, send: Callable[[Message], None], *, pre_vote: bool) -> None:
        self.id = core.id
        self.log = core.log
        self.pre_vote = pre_vote
        # The term the votes are asked for. A pre-vote asks about the next term
        # without taking it (thesis §9.6); a candidate has already taken it.
        self.term = core.current_term + 1 if pre_vote else core.current_term
        # Only voters are asked and counted (learners never vote, thesis §4.2.1).
        self._voters = core.membership.voters
        self._others = tuple(sorted(peer for peer in self._voters if peer != core.id))
        self._send = send
        self.votes: dict[int, bool] = {core.id: True}  # peer -> granted; ours is ours

    def result(self) -> quorum.VoteResult:
        return quorum.vote_result(self.votes, len(self._voters))

    def refusals(self) -> int:
        return sum(1 for granted in self.votes.values() if not granted)

    def request_votes(self) -> None:
        """Send RequestVote to every peer that has not answered this round yet."""
        for peer in self._others:
            if peer not in self.votes:
                self._send(
                    RequestVote(
                        src=self.id,
                        dst=peer,
                        term=self.term,
                        last_log_index=self.log.last_index,
                        last_log_term=self.log.last_term,
                        pre_vote=self.pre_vote,
                    )
                )

    def count(self, msg: RequestVoteReply) -> quorum.VoteResult | None:
        """Record ``msg``'s answer (the first from each peer); None if it answers another round.

        The core passes only replies of its current term, or pre-vote grants of
        a later term: a grant's term says which pre-vote round it answers.
        """
        if msg.pre_vote != self.pre_vote or msg.src not in self._voters:
            return None
        if msg.pre_vote and msg.vote_granted and msg.term != self.term:
            return None  # a grant from an older pre-vote round
        self.votes.setdefault(msg.src, msg.vote_granted)
        return self.result()
