"""Membership changes in the core simulator: the events that make them, and their checks.

With ``Simulation(..., members=True)`` the cluster has two spare nodes beside
its seed voters. Spares start empty and configured to join (``peers=()``);
at random moments a leader is asked for one single-server change among those
that make sense then: add a node that was never a member as a learner,
promote a learner, or remove a member (a voter, the leader itself included,
or a learner) while more voters than the seed are left, so runs go 3 -> 5 ->
3 and back under every fault the simulator throws. A removed id is retired
for good (``Membership.retired``), so when no spare is left the simulator
grows a new node with a fresh id (at most :data:`MAX_GROWN` of them); removed
nodes keep running, as a removed server that was never told would. Changes the
core must refuse (a second one in flight, before an entry of the term
committed, a promotion of a lagging learner, the return of a retired id) are
refused with ChangeRefused and change nothing.

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

if TYPE_CHECKING:
    from .simulator import Simulation

SPARES = 2
# New nodes a run may grow once the spares are used up (each removal retires an id).
MAX_GROWN = 4
# The chance that an addition asks for a retired id instead, which must be refused.
RETURN_OF_RETIRED = 0.1


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
        self.proposed = 0
        self.refused = 0
        self.max_voters = len(self.seed_voters)
        self.leaders_removed = 0
        self.grown = 0  # nodes added to the simulation with fresh ids
        self.retired_refused = 0  # additions of a retired id, refused

    def seed_of(self, node: int) -> tuple[int, ...]:
        """``--peers`` of a node: the seed voters for them, nothing for a spare (it joins)."""
        if node in self.seed_voters:
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
            if change.node_id in core.membership.retired:
                self.retired_refused += 1
            return
        if change.kind is ChangeKind.ADD_LEARNER:
            if change.node_id in core.membership.retired:
                self.sim.checker.fail(f"membership: n{core.id} took back retired n{change.node_id}")
            if change.node_id not in self.sim.nodes:
                # A new machine under a fresh id; nothing of the change was sent yet.
                self.sim.add_node(change.node_id)
                self.grown += 1
        self.proposed += 1
        self.max_voters = max(self.max_voters, len(core.membership.voters))
        if change.kind is ChangeKind.REMOVE and change.node_id == core.id:
            self.leaders_removed += 1
        self.sim.drive(node)

    def _pick(self, core: RaftCore) -> Change | None:
        config = core.membership
        choices: list[Change] = []
        addition = self._addition(config)
        if addition is not None:
            choices.append(Change(ChangeKind.ADD_LEARNER, addition, ""))
        for learner in sorted(config.learners):
            choices.append(Change(ChangeKind.PROMOTE, learner))
            choices.append(Change(ChangeKind.REMOVE, learner))
        if len(config.voters) > len(self.seed_voters):
            choices.append(Change(ChangeKind.REMOVE, self.rng.choice(sorted(config.voters))))
        return self.rng.choice(choices) if choices else None

    def _addition(self, config: membership.Membership) -> int | None:
        """An id to add: now and then a retired one (to be refused), else a node that
        was never a member, else a fresh id while the run may still grow."""
        if config.retired and self.rng.random() < RETURN_OF_RETIRED:
            return self.rng.choice(sorted(config.retired))
        fresh = [n for n in self.sim.ids if not config.is_member(n) and n not in config.retired]
        if fresh:
            return self.rng.choice(fresh)
        if self.grown < MAX_GROWN:
            return max(self.sim.ids) + 1
        return None
