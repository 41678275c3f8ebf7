"""Read-index reads (Raft thesis §6.4; etcd raft's ReadIndex): a leader's reads without a log entry.

Seam: the :class:`~kvraft.raft.leader.Leader` sends and counts; this module
keeps the bookkeeping of the reads one leader was asked for and of the rounds
that confirm them, as plain data, so the rules below read in one place.

The rules, and why each is needed:

1. A read is answered at a *read index*: the leader's commit index when the
   round that confirms the read starts. Once the state machine has applied up
   to it, every write that completed before the read was asked for is in the
   answer, because a completed write was committed, and a leader that still
   leads holds every committed entry (Leader Completeness, §5.4).
2. A leader serves no read until an entry of its own term has committed
   (thesis §6.4 step 1): until then its commit index may trail what earlier
   leaders committed (etcd #7331). Reads asked for earlier wait
   (:attr:`ReadIndex.waiting`), and their read index is taken once it has.
3. The leader confirms it still leads with one heartbeat round (step 3):
   every AppendEntries it sends carries the id of the latest round started
   (``read_round``), every reply echoes the id of the message it answers,
   and a round is confirmed once a majority of voters, the leader included,
   echoed that id or a later one in the leader's own term. A later id
   confirms an earlier round too: its message left after that round began.
   All the reads asked for since the last round began share the next round,
   so a burst of reads costs one round, not one per read.
4. Round ids are strictly increasing and never reused (etcd #20418: a reused
   id let an answer to an old round confirm a new one, and a paused leader
   that had been deposed answered stale reads). The core draws them from one
   counter that lives as long as the core, across its terms of leadership;
   a reply counts only in the term it was sent in, and a node never leads
   the same term twice, not even after a restart (which resets the counter:
   elections only move terms forward), so ``(term, round)`` names a round
   once in the cluster's whole history.
5. A leader that steps down fails every read it holds (the driver answers
   them WrongLeader and the client asks elsewhere); a follower refuses reads
   outright (the core's ``read_index`` returns False).

Reads are identified by an id of the driver's choosing (``request_id``); the
driver must not reuse one while it is pending (rule 4 on the driver's side).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read the leader confirmed: answer ``request_id`` once applied >= ``index``."""

    request_id: int
    index: int


@dataclass(slots=True)
class _Round:
    round_id: int
    index: int
    request_ids: list[int]


@dataclass(slots=True)
class ReadIndex:
    """The reads one leader holds, by stage: waiting, queued for a round, in a round.

    Invariant: round ids in ``in_flight`` strictly increase, and each is at
    most ``last_round``.
    """

    # The id of the latest round started (0: none yet in this core's life).
    last_round: int = 0
    # Rule 2: asked for before an entry of the leader's term committed.
    waiting: list[int] = field(default_factory=list)
    # Asked for since the last round started: they share the next one.
    queued: list[int] = field(default_factory=list)
    in_flight: deque[_Round] = field(default_factory=deque)

    def __len__(self) -> int:
        """Reads held, at every stage."""
        in_rounds = sum(len(read_round.request_ids) for read_round in self.in_flight)
        return len(self.waiting) + len(self.queued) + in_rounds

    def ask(self, request_id: int, *, own_term_committed: bool) -> None:
        """A read was asked for; it waits for rule 2 or joins the next round."""
        (self.queued if own_term_committed else self.waiting).append(request_id)

    def own_term_committed(self) -> None:
        """Rule 2 now holds: the reads that waited for it join the next round."""
        if self.waiting:
            self.queued.extend(self.waiting)
            self.waiting.clear()

    def start_round(self, round_id: int, index: int) -> bool:
        """Start round ``round_id`` at read index ``index`` for the queued reads; whether any were.

        ``round_id`` must be above every id started before (rule 4).
        """
        if not self.queued:
            return False
        assert round_id > self.last_round, (round_id, self.last_round)
        self.last_round = round_id
        self.in_flight.append(_Round(round_id, index, self.queued))
        self.queued = []
        return True

    def confirm(self, confirmed_round: int) -> list[ReadState]:
        """The reads of every round at or below ``confirmed_round``, now confirmed (rule 3)."""
        done: list[ReadState] = []
        in_flight = self.in_flight
        while in_flight and in_flight[0].round_id <= confirmed_round:
            read_round = in_flight.popleft()
            done.extend(ReadState(rid, read_round.index) for rid in read_round.request_ids)
        return done

    def take_all(self) -> list[int]:
        """Every read held, removed: the leader steps down and fails them (rule 5)."""
        ids = [*self.waiting, *self.queued]
        for read_round in self.in_flight:
            ids.extend(read_round.request_ids)
        self.waiting, self.queued = [], []
        self.in_flight.clear()
        return ids
