"""A node's configuration comes from its data dir, never from a restart's ``--peers``.

The seed (who the members are before the log or a snapshot holds a
configuration) is written when the data dir is created: the voters ``--peers``
names at bootstrap, or nobody for a node made to join. After that, ``--peers``
only says how to reach members.

Reference for all: Raft thesis §4.1 (the configuration is the log's).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvraft.raft.core import Role
from kvraft.raft.membership import Change, ChangeKind, Membership
from kvraft.server.options import ServerOptions
from kvraft.server.process import Server
from kvraft.testing import processes

from .node_support import single_node_options


def options(data_dir: Path, **overrides: object) -> ServerOptions:
    base = single_node_options(data_dir) | {"insecure_peers": True, "peer_secret": None}
    return ServerOptions(**(base | overrides))


def opened_membership(opts: ServerOptions) -> Membership:
    """Open the data dir as ``kvraft server`` would, and close it without serving."""
    server = Server.open(opts)
    try:
        return server.node.core.membership
    finally:
        asyncio.run(server.node.stop())


PEERS = {0: "127.0.0.1:1", 1: "127.0.0.1:2", 2: "127.0.0.1:3"}
MORE_PEERS = PEERS | {3: "127.0.0.1:4", 4: "127.0.0.1:5"}


def test_a_restart_with_more_peers_keeps_the_members_it_was_created_with(tmp_path: Path) -> None:
    """No change was ever made: the log holds no configuration, the seed is in force."""
    assert opened_membership(options(tmp_path, peers=PEERS)).voters == {0, 1, 2}

    again = opened_membership(options(tmp_path, peers=MORE_PEERS))

    assert again.voters == {0, 1, 2}
    assert again.learners == frozenset()
    assert again.address(1) == PEERS[1]  # advertised at bootstrap, not re-read


def test_a_data_dir_created_to_join_never_adopts_peers_as_members(tmp_path: Path) -> None:
    """--initial-cluster-state existing makes a store with no members; a later start
    without it (its --peers naming the node itself) still has none, so the node
    never campaigns and waits for the leader that added it."""
    joined = opened_membership(options(tmp_path, node_id=3, peers=PEERS, join_existing=True))
    assert joined.members == frozenset()

    restarted = options(tmp_path, node_id=3, peers=MORE_PEERS)
    assert opened_membership(restarted).members == frozenset()

    async def never_campaigns() -> Role:
        server = Server.open(restarted)
        await server.node.start()
        try:
            await asyncio.sleep(5 * server.node.election_timeout_s)
            return server.node.core.role
        finally:
            await server.node.stop()

    assert asyncio.run(never_campaigns()) is Role.FOLLOWER


def test_a_restart_after_a_change_keeps_the_new_configuration(tmp_path: Path) -> None:
    """A one-node cluster adds a learner; restarted with its old --peers, it still has it."""
    port = processes.reserve_port()
    address = f"127.0.0.1:{port}"
    first = options(tmp_path, listen=address, peers={0: address})

    async def add_learner() -> None:
        server = Server.open(first)
        await server.start()
        try:
            node = server.node
            deadline = asyncio.get_running_loop().time() + 10
            while not (node.get_state()[1] and node.core.commit_index > 0):
                assert asyncio.get_running_loop().time() < deadline, "no leader in 10 s"
                await asyncio.sleep(0.01)
            index, _ = node.propose_change(Change(ChangeKind.ADD_LEARNER, 1, "127.0.0.1:9"))
            while node.core.commit_index < index:
                assert asyncio.get_running_loop().time() < deadline, "change not committed"
                await asyncio.sleep(0.01)
        finally:
            await server.stop()

    try:
        asyncio.run(add_learner())
    finally:
        processes.release_ports([port])

    restarted = opened_membership(first)
    assert restarted.voters == {0}
    assert restarted.learners == {1}
    assert restarted.address(1) == "127.0.0.1:9"
