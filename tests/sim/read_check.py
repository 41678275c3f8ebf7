"""The simulator's checker of read-index reads, from outside the cores.

A read asked of a node at some moment must be answered at a read index at
or above every index known committed anywhere in the cluster at that moment
(a write acknowledged before the read began is in its answer), and once the
node's state machine has applied that index (the Ready contract: a Ready's
reads come after its committed entries). Every read is answered or failed at
most once, and only by the node it was asked of.

The checker learns "committed anywhere" from the simulator's
:class:`~tests.sim.simulator.Checker`, which records every commit index any
core reaches after every step, so the bound is exact, not a sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvraft.raft.core import RaftCore
from kvraft.raft.ready import Ready


@dataclass(frozen=True, slots=True)
class _Asked:
    node: int
    term: int
    required: int  # the highest index known committed when the read was asked
    at_tick: int


class ReadChecker:
    """Asks cores for reads and checks every answer (see the module docstring)."""

    def __init__(self, fail: Callable[[str], None], committed_index: Callable[[], int]) -> None:
        self._fail = fail
        self._committed_index = committed_index
        self._asked: dict[int, _Asked] = {}
        self._next_id = 0
        self.asked = 0
        self.refused = 0  # not leader: refused at once
        self.served = 0
        self.failed = 0  # the leader stepped down first
        self.served_after_pause = 0

    def ask(self, node: int, core: RaftCore, now: int) -> None:
        """Ask ``core`` (of node ``node``) for a read now, if it takes it."""
        self._next_id += 1
        self.asked += 1
        request_id = self._next_id
        required = self._committed_index()
        if core.read_index(request_id):
            self._asked[request_id] = _Asked(node, core.current_term, required, now)
        else:
            self.refused += 1

    def performed(self, node: int, ready: Ready, applied_index: int, paused: bool) -> None:
        """Node ``node`` performed ``ready`` up to its applies: check its reads.

        ``paused``: whether the node was paused since it started (for the report).
        """
        for read in ready.reads:
            asked = self._take(node, read.request_id, "answered")
            if read.index < asked.required:
                when = " after a pause" if paused else ""
                self._fail(
                    f"read index: stale read{when}: n{node} answered read {read.request_id} "
                    f"(asked at tick {asked.at_tick} in term {asked.term}) at index "
                    f"{read.index}, but index {asked.required} was committed before it was asked"
                )
            if applied_index < read.index:
                self._fail(
                    f"read index: n{node} handed out read {read.request_id} at index "
                    f"{read.index} with its state machine applied only to {applied_index}"
                )
            self.served += 1
            if paused:
                self.served_after_pause += 1
        for request_id in ready.failed_reads:
            self._take(node, request_id, "failed")
            self.failed += 1

    def crashed(self, node: int) -> None:
        """The node's pending reads die with it (their clients time out)."""
        for request_id in [rid for rid, asked in self._asked.items() if asked.node == node]:
            del self._asked[request_id]

    def _take(self, node: int, request_id: int, how: str) -> _Asked:
        asked = self._asked.pop(request_id, None)
        if asked is None or asked.node != node:
            self._fail(
                f"read index: n{node} {how} read {request_id}, which it was not asked for "
                f"or had answered already ({asked})"
            )
            raise AssertionError("unreachable")
        return asked
