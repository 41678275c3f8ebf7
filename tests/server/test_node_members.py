"""Whom a node talks to while its configuration changes (RaftNode._check_members).

The transport dials, and peer authentication admits, the members of the
latest configuration *and* of the latest committed one. A leader removing
itself (Raft thesis §4.2.2) is in neither its followers' latest configuration
nor its own, yet it replicates its removal: until that commits, its followers
must still be able to answer it. Found on hosts of their own (tests/netns),
where the removed leader was no follower's ``--peers`` entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from kvraft.raft import membership
from kvraft.raft.config import RaftConfig
from kvraft.raft.membership import Membership
from kvraft.raft.messages import Entry
from kvraft.raft.ready import HardState, Snapshot
from kvraft.raft.storage import MemoryStorage
from kvraft.server.node import NodeTiming, RaftNode, StateMachine

from .node_support import RecordingTransport

WITH_N4 = Membership(frozenset({1, 2, 3, 4}), addresses={4: "h4:7001"})
WITHOUT_N4 = Membership(frozenset({1, 2, 3}))


class NullStateMachine(StateMachine):
    def apply(self, entry: Entry) -> None:
        pass

    def restore(self, snapshot: Snapshot) -> None:
        pass


def reach_at_start(commit_index: int) -> list[dict[int, str]]:
    """n1's log: n4 added at index 1, removed at 2; what on_members_changed is told."""
    storage = MemoryStorage()
    entries = [
        Entry(term=1, index=1, command=membership.encode(WITH_N4)),
        Entry(term=1, index=2, command=membership.encode(WITHOUT_N4)),
    ]
    storage.save(
        HardState(current_term=1, voted_for=None, commit_index=commit_index), entries, None
    )
    told: list[dict[int, str]] = []

    async def main() -> None:
        node = RaftNode(
            RaftConfig(node_id=1, peers=(1, 2, 3)),
            storage,
            RecordingTransport(),
            NullStateMachine(),
            timing=NodeTiming(tick_interval_s=0.01),
        )

        def changed(members: Mapping[int, str]) -> None:
            told.append(dict(members))

        node.on_members_changed = changed
        await node.start()
        await node.stop()

    asyncio.run(main())
    return told


def test_a_member_removed_by_an_uncommitted_entry_is_still_reached() -> None:
    """Reference: Raft thesis §4.2.2"""
    told = reach_at_start(commit_index=1)

    assert told[-1] == {1: "", 2: "", 3: "", 4: "h4:7001"}


def test_once_the_removal_commits_the_member_is_no_longer_reached() -> None:
    """Reference: Raft thesis §4.2.2"""
    told = reach_at_start(commit_index=2)

    assert told[-1] == {1: "", 2: "", 3: ""}
