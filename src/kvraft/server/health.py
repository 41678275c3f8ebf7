"""Whether a node is healthy, for ``/health``: it knows a leader and keeps applying.

A pure judgement over what the node already keeps (its leader, its commit and
applied indexes, when its applied index last moved), so it is tested without
a cluster and costs nothing until asked. The rules, as etcd's ``/health``
reads them for an operator or a load balancer:

- **no leader**: the node knows no leader of its term (an election is going
  on, or it is cut off from a majority: a minority follower's pre-votes fail
  and a partitioned leader steps down by check-quorum). Writes and reads
  through it cannot complete.
- **applied index stalled**: the commit index is ahead of the applied index
  and the applied index has not moved for ``stall_s`` (three of the longest
  election timeouts, :func:`stall_bound_s`): the node's loop is stuck, e.g.
  on a disk that stopped answering. An applied index equal to the commit
  index is healthy however long ago it moved: an idle cluster is fine.
"""

from __future__ import annotations

from dataclasses import dataclass

# How many of the longest election timeouts the applied index may stay behind
# the commit index before the node is unhealthy: a save slower than one
# election timeout happens on a busy disk; three in a row is a stuck node.
STALL_ELECTION_TIMEOUTS = 3


def stall_bound_s(election_timeout_ticks: int, tick_interval_s: float) -> float:
    """Three of the longest (randomized up to 2x) election timeouts, in seconds."""
    return STALL_ELECTION_TIMEOUTS * 2 * election_timeout_ticks * tick_interval_s


@dataclass(frozen=True)
class Health:
    """A verdict: ``healthy``, or the reason it is not (one line, for the operator)."""

    healthy: bool
    reason: str = ""


def judge(
    *,
    leader_id: int | None,
    applied_index: int,
    commit_index: int,
    applied_at_s: float | None,
    now_s: float,
    stall_s: float,
) -> Health:
    """The node's health from its leader, its indexes and when its applied index last moved.

    ``applied_at_s``: the clock time the applied index last moved (the node's
    start if it never did; None before it started, which counts as now).
    """
    if leader_id is None:
        return Health(False, "no leader")
    if applied_index < commit_index:
        since_s = now_s - (applied_at_s if applied_at_s is not None else now_s)
        if since_s >= stall_s:
            return Health(
                False,
                f"applied index stalled at {applied_index} since {since_s:.1f} s ago"
                f" (commit index {commit_index})",
            )
    return Health(True)
