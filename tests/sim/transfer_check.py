"""The leadership-transfer checker both simulators share, outside the code under test.

Raft's safety properties (the :class:`~tests.sim.simulator.Checker`) hold
whatever a transfer does: an early TimeoutNow, or proposals taken during a
transfer, only start an election or append entries, both of which Raft
survives. What a transfer promises beyond them (Raft thesis §3.10) is checked
here, from what the world sees:

- **caught up first**: a TimeoutNow leaves a leader only in a transfer, and
  only when the target's *disk* holds the leader's last entry as of the
  transfer's start (same index, same term; the log must not grow during a
  transfer, see the next rule), unless the target has moved on to a later
  term (a new leader's log may have replaced what it acknowledged). As of the
  start of the first transfer to that target in that term, not of the
  sending: a TimeoutNow queued behind a slow write (a new leader's first
  Ready waits for its term to reach the disk) may leave after its transfer
  was abandoned and the log grew again, and only makes the target campaign;
- **no proposal during a transfer**: for one election timeout after a leader
  accepted a transfer, while it still leads that term, every proposal is
  refused;
- **abandoned after one election timeout**: from then on, while it leads that
  term, proposals are accepted again;
- **the log stands still**: while a leader says a transfer runs, its log is
  as long as when the transfer began (for the node simulator, whose proposals
  come from clients through the RSM at moments the ticks do not line up with).

The tick arithmetic is the core's: a transfer asked for before the tick
numbered ``t`` has run ``now - t`` ticks at tick ``now``, and is abandoned by
the tick at which that reaches ``election_timeout_ticks``.
"""

from __future__ import annotations

from collections.abc import Callable

from kvraft.raft.core import RaftCore
from kvraft.raft.messages import TimeoutNow
from kvraft.raft.storage import MemoryStorage


class TransferChecker:
    def __init__(self, fail: Callable[[str], None], election_timeout_ticks: int) -> None:
        self._fail = fail
        self._timeout = election_timeout_ticks
        # (leader, term) -> the tick its latest transfer was accepted at.
        self._asked: dict[tuple[int, int], int] = {}
        # (leader, term) -> its last index when its latest transfer began.
        self._started_at: dict[tuple[int, int], int] = {}
        # (leader, term, target) -> the leader's last index and term when its first
        # transfer to target in that term began (the log only grows: the weakest claim).
        self._caught_up_to: dict[tuple[int, int, int], tuple[int, int]] = {}
        self.transfers = 0
        self.timeouts_sent = 0
        self.refused = 0

    def asked(self, leader: RaftCore, target: int, tick: int) -> None:
        """``leader`` accepted a transfer to ``target`` at ``tick`` (none was running)."""
        self._asked[(leader.id, leader.current_term)] = tick
        self._started_at[(leader.id, leader.current_term)] = leader.last_index
        self._caught_up_to.setdefault(
            (leader.id, leader.current_term, target), (leader.last_index, leader.last_term)
        )
        self.transfers += 1

    def completed(self, leader_of_term: dict[int, int]) -> int:
        """How many transfers ended with their target leading the very next term."""
        return sum(
            leader_of_term.get(term + 1) == target for (_, term, target) in self._caught_up_to
        )

    def proposed(self, core: RaftCore, accepted: bool, tick: int) -> None:
        """``core`` (a leader) answered a proposal at ``tick``."""
        started = self._asked.get((core.id, core.current_term))
        if started is None:
            return
        elapsed = tick - started
        if elapsed < self._timeout and accepted:
            self._fail(
                f"transfer: n{core.id} took a proposal {elapsed} ticks into its transfer "
                f"at term {core.current_term} (must refuse for {self._timeout})"
            )
        if elapsed >= self._timeout and not accepted:
            self._fail(
                f"transfer: n{core.id} still refuses proposals {elapsed} ticks after its "
                f"transfer began at term {core.current_term} (abandoned after {self._timeout})"
            )
        if not accepted:
            self.refused += 1

    def log_stands_still(self, core: RaftCore) -> None:
        """``core``'s log has not grown since its running transfer (if any) began."""
        if core.transfer_target is None:
            return
        started_at = self._started_at.get((core.id, core.current_term))
        if started_at is not None and core.last_index > started_at:
            self._fail(
                f"transfer: n{core.id} appended up to {core.last_index} during its transfer "
                f"to n{core.transfer_target}, begun at index {started_at}"
            )

    def timeout_now(self, msg: TimeoutNow, target: MemoryStorage) -> None:
        """``msg`` leaves its sender; ``target`` is the storage of its destination."""
        self.timeouts_sent += 1
        caught_up_to = self._caught_up_to.get((msg.src, msg.term, msg.dst))
        if caught_up_to is None:
            self._fail(
                f"transfer: n{msg.src} sent TimeoutNow at term {msg.term} "
                f"without a transfer to n{msg.dst}"
            )
            return
        if target.hard_state.current_term > msg.term:
            return  # the target moved on: a later leader may have replaced its log
        index, term = caught_up_to
        snapshot = target.snapshot
        offset = snapshot.index if snapshot is not None else 0
        if index <= offset:
            return
        stored = (
            target.entries[index - offset - 1] if index - offset <= len(target.entries) else None
        )
        if stored is None or stored.term != term:
            self._fail(
                f"transfer: n{msg.src} sent TimeoutNow to n{msg.dst} at term {msg.term} "
                f"before it held the leader's last entry {index}@{term} "
                f"(its disk: {offset + len(target.entries)} entries, "
                f"{'that one of term ' + str(stored.term) if stored else 'not that one'})"
            )
