"""Membership changes in the core simulator: the events that make them, and their checks.

With ``Simulation(..., members=True)`` the cluster has two spare nodes beside
its seed voters. Spares start empty and configured to join (``peers=()``);
at random moments a leader is asked for one single-server change among those
that make sense then: add a non-member as a learner (its disk wiped first, a
new machine under an old id), promote a learner, or remove a member (a voter,
the leader itself included, or a learner) while more voters than the seed are
left, so runs go 3 -> 5 -> 3 and back under every fault the simulator throws.
Changes the core must refuse (a second one in flight, before an entry of the
term committed, a promotion of a lagging learner) are refused with
ChangeRefused and change nothing.

:class:`MembershipChecker` holds §4.1's rules from outside the core, after
every step: no leader's log ever holds two configuration entries above its
commit index (one change at a time), a leader appends a configuration of its
own term only once an entry of that term is committed, and every leader is a
voter of a configuration in its log when it takes office. Election safety,
log matching, leader completeness and state machine safety are the
simulator's own checks, which hold across the changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvraft.raft import membership
from kvraft.raft.core import RaftCore, Role
from kvraft.raft.membership import Change, ChangeKind, ChangeRefused
from kvraft.raft.storage import MemoryStorage

if TYPE_CHECKING:
    from .simulator import Node, Simulation

SPARES = 2


class MembershipChecker:
    """Thesis §4.1's rules for changes, checked on each leader's log."""

    def __init__(self, fail: Callable[[str], None]) -> None:
        self.fail = fail
        self.changes_checked: set[tuple[int, int]] = set()  # (index, term) seen proposed
        self._leaders_seen: set[tuple[int, int]] = set()  # (node, term)

    def observe_leader(self, core: RaftCore) -> None:
        if (core.id, core.current_term) not in self._leaders_seen:
            self._leaders_seen.add((core.id, core.current_term))
            self.became_leader(core)
        uncommitted = [
            index
            for index in range(core.commit_index + 1, core.last_index + 1)
            if membership.is_config_command(_command(core, index))
        ]
        if len(uncommitted) > 1:
            self.fail(
                f"membership: leader n{core.id} of term {core.current_term} holds "
                f"{len(uncommitted)} uncommitted configuration entries {uncommitted} "
                f"(commit index {core.commit_index}): one change at a time"
            )
        for index in uncommitted:
            term = core.term(index)
            if term != core.current_term or (index, term) in self.changes_checked:
                continue
            self.changes_checked.add((index, term))
            # Proposed in this term (we see it the step it was appended): an entry
            # of this term must already be committed.
            if core.term(core.commit_index) != core.current_term:
                self.fail(
                    f"membership: leader n{core.id} appended a configuration at index "
                    f"{index} in term {term} before committing an entry of its term "
                    f"(commit index {core.commit_index})"
                )

    def became_leader(self, core: RaftCore) -> None:
        config = _latest_config_in_log(core)
        if config is not None and core.id not in config.voters:
            self.fail(
                f"membership: n{core.id} became leader of term {core.current_term} "
                f"but is not a voter of its configuration {config.describe()}"
            )


def _command(core: RaftCore, index: int) -> bytes | None:
    entry = core.entry(index)
    return entry.command if entry is not None else None


def _latest_config_in_log(core: RaftCore) -> membership.Membership | None:
    """The latest configuration in ``core``'s log or snapshot, read from outside the core."""
    for index in range(core.last_index, core.first_index - 1, -1):
        entry = core.entry(index)
        if entry is not None:
            config = membership.entry_config(entry)
            if config is not None:
                return config
    snapshot = core.snapshot
    return snapshot.config if snapshot is not None else None


class MembershipEvents:
    """Asks leaders for random single-server changes (a random stream of its own)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.rng = random.Random(f"kvraft-sim-members/{sim.seed}/{sim.size}")
        self.rate = self.rng.choice([0.05, 0.1, 0.2])
        # How far behind a learner may be promoted: 1000 is "at once", for
        # the liveness of voters that start empty.
        self.promotion_lag = self.rng.choice([0, 4, 16, 1000])
        self.seed_voters = frozenset(range(sim.size))
        # Every id that was ever a voter (the seed, every promotion): such an id
        # is never re-added on an empty disk (docs/membership.md: never reuse a
        # removed node's id with a new data dir). A node whose log is far behind
        # may still hold a configuration where that id votes, and an empty node
        # answers its vote request as if it had never voted or logged anything:
        # seed 10692 (3 nodes) elected such a stale node without a committed entry.
        self.ever_voters: set[int] = set(self.seed_voters)
        self.proposed = 0
        self.refused = 0
        self.max_voters = len(self.seed_voters)
        self.leaders_removed = 0

    def seed_of(self, node: int) -> tuple[int, ...]:
        """``--peers`` of a node: the seed voters for them, nothing for a spare (it joins)."""
        if node in self.seed_voters and node not in self.sim.wiped:
            return tuple(sorted(self.seed_voters))
        return ()

    def maybe_change(self) -> None:
        if self.rng.random() >= self.rate:
            return
        leaders = [
            node
            for node in self.sim.nodes.values()
            if node.core is not None and node.core.role is Role.LEADER
        ]
        if not leaders:
            return
        node = self.rng.choice(leaders)
        core = node.core
        assert core is not None
        change = self._pick(core)
        if change is None:
            return
        before = core.last_index
        try:
            core.propose_change(change)
        except ChangeRefused:
            self.refused += 1
            if core.last_index != before:
                self.sim.checker.fail(f"membership: n{core.id} refused {change} but appended")
            return
        if change.kind is ChangeKind.ADD_LEARNER and change.node_id not in self.ever_voters:
            # Accepted, so the configuration that removed it (if any) is committed:
            # only now may its old disk go (a voter's disk lost earlier could
            # forget what it acknowledged). Nothing of the change was sent yet.
            # An id that ever voted comes back on its own disk (see ever_voters).
            self._wipe(self.sim.nodes[change.node_id])
        if change.kind in (ChangeKind.PROMOTE, ChangeKind.ADD_VOTER):
            self.ever_voters.add(change.node_id)
        self.proposed += 1
        self.max_voters = max(self.max_voters, len(core.membership.voters))
        if change.kind is ChangeKind.REMOVE and change.node_id == core.id:
            self.leaders_removed += 1
        self.sim.drive(node)

    def _pick(self, core: RaftCore) -> Change | None:
        config = core.membership
        others = [n for n in self.sim.ids if not config.is_member(n)]
        choices: list[Change] = []
        if others:
            choices.append(Change(ChangeKind.ADD_LEARNER, self.rng.choice(others), ""))
        for learner in sorted(config.learners):
            choices.append(Change(ChangeKind.PROMOTE, learner))
            choices.append(Change(ChangeKind.REMOVE, learner))
        if len(config.voters) > len(self.seed_voters):
            choices.append(Change(ChangeKind.REMOVE, self.rng.choice(sorted(config.voters))))
        return self.rng.choice(choices) if choices else None

    def _wipe(self, node: Node) -> None:
        """A node about to be added gets an empty disk and joins afresh (a new machine)."""
        if node.core is not None:
            self.sim.crash(node, "to be replaced by an empty node")
        node.storage = MemoryStorage()
        self.sim.wiped.add(node.id)
        self.sim.start(node)
