"""A leader's transfer of its leadership to one follower (Raft thesis §3.10).

Seam: :class:`~kvraft.raft.core.RaftCore` decides whether a transfer may begin
(it refuses when not leader, or a target that is itself or not a peer) and
refuses proposals while one runs; :class:`~kvraft.raft.leader.Leader` holds the
running :class:`Transfer`, brings the target's log up to date through its
ordinary replication, and sends ``TimeoutNow`` once the target's match index
reaches the leader's last index. This module holds the state and the rules:

1. While a transfer runs the leader accepts no proposal: its log stops
   growing, so "the target caught up" stays true once it is, and no entry is
   appended that the new leader might overwrite unreplicated. Clients are told
   NotLeader (nothing was submitted) and retry at the new leader.
2. ``TimeoutNow`` goes out only when the target holds the leader's whole log
   (match index == last index), so its campaign cannot lose on log length,
   and again on every later acknowledgement of the target's while the
   transfer runs (a lost TimeoutNow is repaired by the next heartbeat's
   answer; a duplicate reaches a candidate of a later term, which ignores it).
3. After one election timeout the transfer is abandoned and proposals are
   accepted again: the target is down, slow, or lost the election. Thesis:
   "if the transfer does not complete within an election timeout, the prior
   leader aborts the transfer and resumes accepting client requests."
4. The leader, and only it, sets its lease aside for the target's vote
   request at the next term (check-quorum would otherwise make it ignore the
   request as coming from a disruptive node): it steps down and votes like
   any follower, which in a 3-node cluster makes the target's majority at
   once. Other followers still in their lease refuse until it lapses (one
   election timeout after they last heard the leader); the vote request
   carries no mark that lets them set it aside (the wire stays as it is).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


class TransferRefused(Exception):
    """The leader cannot start a transfer: not leader, or a target that is itself or unknown.

    A local error of the caller's, raised at once; nothing changed.
    """


@dataclass(slots=True)
class Transfer:
    """One transfer in progress, to ``target``; alive for at most ``timeout_ticks`` ticks."""

    target: int
    timeout_ticks: int
    elapsed_ticks: int = 0
    timeout_now_sent: int = 0  # how many TimeoutNow went out (for the operator's log)

    def tick(self) -> bool:
        """One tick; False once the transfer has run for its election timeout (abandon it)."""
        self.elapsed_ticks += 1
        return self.elapsed_ticks < self.timeout_ticks


def check_target(node_id: int, voters: Collection[int], target: object) -> int:
    """``target`` if a transfer to it may start, else :class:`TransferRefused` saying why.

    Only a voter may lead: a transfer to a learner (or a non-member) is refused.
    """
    if not isinstance(target, int) or isinstance(target, bool):
        raise TransferRefused(f"n{node_id}: a transfer target is a peer id, not {target!r}")
    if target == node_id:
        raise TransferRefused(f"n{node_id}: cannot transfer leadership to itself")
    if target not in voters:
        known = ", ".join(f"n{peer}" for peer in sorted(voters) if peer != node_id)
        raise TransferRefused(f"n{node_id}: n{target} is not a voter (voters: {known})")
    return target
