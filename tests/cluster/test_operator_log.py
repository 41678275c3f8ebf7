"""Operator log lines for events that matter: a leader noticing a peer lost and found."""

from __future__ import annotations

import pytest

from kvraft.testing.waiting import wait_until

from .kv_support import find_leader

pytestmark = pytest.mark.slow


def test_leader_logs_peer_lost_and_found(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A disconnected follower is logged as lost by the leader, and as back on reconnect."""
    cluster = make_cluster(3)
    leader = find_leader(cluster)
    follower = (leader + 1) % 3
    cluster.disconnect(follower)
    wait_until(
        lambda: f"lost contact with n{follower}" in cluster.log_path(leader).read_text(),
        10,
        message="the leader logs the lost follower",
    )
    cluster.reconnect(follower)
    wait_until(
        lambda: f"peer n{follower} is back" in cluster.log_path(leader).read_text(),
        10,
        message="the leader logs the follower's return",
    )
    line = next(x for x in cluster.log_path(leader).read_text().splitlines() if "lost contact" in x)
    assert f"n{leader} [term " in line and "at index" in line
