"""A request held in transit for seconds, delivered after its client moved on, changes nothing.

TCP delivers a segment late, after a partition heals, on the connection that
sent it: by then the client timed out, resent the request, got its answer
through the same leader and went on to other requests. Without client
sessions (Raft thesis §6.3) that late copy was a new command: a put the
client was told failed with NoKey could still apply once another client had
created the key. With sessions the copy carries the same ``(client_id,
request_id)`` as the resend, below what the client has since acknowledged:
the leader refuses it as stale (or answers it with the first result), and it
applies nothing. The fault proxy's ``hold_next_request`` holds exactly one
request; the resend behind it passes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kvraft.errors import NoKey
from kvraft.rpc.codec import client_sender
from kvraft.testing.cluster import Cluster
from kvraft.testing.history import History
from kvraft.testing.linearizability import assert_linearizable
from kvraft.testing.waiting import wait_until
from tests.cluster.kv_support import RecordingClient, find_leader

pytestmark = pytest.mark.slow

HOLD_S = 2.0
CALL_TIMEOUT_S = 0.3  # the client resends long before the held copy arrives


def test_a_put_held_in_transit_then_delivered_applies_nothing(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(3)
    history = History()
    other = RecordingClient(cluster, history)
    other.put("warm", "up", 0)
    leader = find_leader(cluster)
    held = RecordingClient(cluster, history, call_timeout_s=CALL_TIMEOUT_S, client_id="held")
    sender = client_sender(held.id)
    try:
        # Not the session's first request, and the client now talks to the leader.
        with pytest.raises(NoKey):
            held.get("created")

        # 1. A put that applies: its first copy is held, the resend applies it.
        cluster.hold_next_request(leader, held.id, "put", HOLD_S)
        started = time.monotonic()
        assert held.put("created", "once", 0) == 1
        # 2. A put told NoKey: its first copy is held, the resend is answered NoKey.
        cluster.hold_next_request(leader, held.id, "put", HOLD_S)
        with pytest.raises(NoKey):
            held.put("missing", "late", 1)
        answered_s = time.monotonic() - started
        assert answered_s < HOLD_S, f"answered in {answered_s:.2f} s: by a held copy?"
        requests = cluster.stats(leader).total("request", method="put", sender=sender)
        assert requests.held == 2 and requests.in_flight == 2, requests

        # The client moves on (it has the answers of both puts), and another
        # client creates the key the held put was conditioned on.
        assert held.put("own", "next", 0) == 1
        assert other.put("missing", "theirs", 0) == 1

        # Both copies arrive, and the leader answers them (the client ignores
        # answers to calls it no longer waits for).
        def answered() -> bool:
            stats = cluster.stats(leader)
            delivered = stats.total("request", method="put", sender=sender)
            replies = stats.total("reply", method="put", sender=sender)
            return delivered.in_flight == 0 and replies.seen == delivered.delivered

        wait_until(answered, HOLD_S + 10, message="the held copies delivered and answered")
        delivered = cluster.stats(leader).total("request", method="put", sender=sender)
        assert delivered.delivered == 5 and delivered.dropped == 0, delivered

        # Each key advanced exactly once: neither late copy applied.
        for client in (other, held):
            assert client.get("created") == ("once", 1)
            assert client.get("missing") == ("theirs", 1)
            assert client.get("own") == ("next", 1)
    finally:
        held.close()
        other.close()
    assert_linearizable(history)
