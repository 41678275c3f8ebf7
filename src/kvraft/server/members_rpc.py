"""The ``member.*`` RPCs: list the configuration, add, promote and remove members (admin).

``member.list`` answers from this node's view (its latest configuration, and
as leader each member's match index). The changes go to the leader (a
follower refuses with ``member_refused`` naming the leader): it proposes the
single-server change (:meth:`~kvraft.raft.core.RaftCore.propose_change`,
thesis §4.1) and answers once the change is committed, or
``member_failed`` if it is not within the wait (leadership lost, no
majority). Every argument is checked against a written bound before
anything changes (ids: ``MAX_MEMBER_ID``; addresses: ``MAX_ADDRESS_CHARS``
and HOST:PORT).
"""

from __future__ import annotations

from typing import Any

from kvraft.addresses import split_address
from kvraft.errors import RemoteError
from kvraft.raft.membership import (
    MAX_ADDRESS_CHARS,
    MAX_MEMBER_ID,
    Change,
    ChangeKind,
    ChangeRefused,
)
from kvraft.server.node import RaftNode

METHODS = ("member.list", "member.add", "member.promote", "member.remove")

# How long a change waits to commit, in election timeouts: a healthy cluster
# commits in a round trip; a new leader may have to be elected first.
CHANGE_WAIT_ELECTION_TIMEOUTS = 4


class MemberService:
    """The ``member.*`` methods of one node."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node

    async def handle(self, method: str, args: Any) -> Any:
        if method == "member.list":
            return self.members()
        change = parse_change(method, args)
        return await self._change(change)

    def members(self) -> dict[str, Any]:
        core = self.node.core
        config = core.membership
        leader = core.leader
        rows = []
        for node in sorted(config.members):
            row: dict[str, Any] = {
                "id": node,
                "address": config.address(node),
                "role": "voter" if config.is_voter(node) else "learner",
            }
            if leader is not None:
                progress = leader.progress.get(node)
                row["match_index"] = (
                    core.log.persisted
                    if node == core.id
                    else (progress.match_index if progress is not None else 0)
                )
            rows.append(row)
        return {
            "id": core.id,
            "leader": core.leader_id,
            "term": core.current_term,
            "last_index": core.last_index,
            "commit_index": core.commit_index,
            "config_index": core.config_log.latest_index,
            "committed": core.config_log.latest_index <= core.commit_index,
            "members": rows,
            "retired": sorted(config.retired),  # removed ids, never to be added again
        }

    async def _change(self, change: Change) -> dict[str, Any]:
        node, core = self.node, self.node.core
        try:
            index, term = node.propose_change(change)
        except ChangeRefused as exc:
            raise RemoteError("member_refused", str(exc)) from None
        wait_s = CHANGE_WAIT_ELECTION_TIMEOUTS * node.election_timeout_s
        clock = node.clock
        deadline = clock.now_s() + wait_s
        while clock.now_s() < deadline:
            if core.term(index) not in (term, None):
                break  # overwritten: a new leader did not have it
            if core.commit_index >= index and core.term(index) in (term, None):
                return {
                    "index": index,
                    "term": term,
                    "voters": sorted(core.config_at(index).voters),
                    "learners": sorted(core.config_at(index).learners),
                }
            await clock.sleep_s(node.timing.tick_interval_s)
        raise RemoteError(
            "member_failed",
            f"the change at index {index} (term {term}) did not commit within {wait_s:g}s"
            " (leadership lost, or no majority of voters reachable); check `kvraft member list`",
        )


def parse_change(method: str, args: Any) -> Change:
    """The change a ``member.*`` request asks for; RemoteError ``bad_request`` if malformed."""
    if method == "member.add":
        if not isinstance(args, dict) or set(args) - {"id", "address", "learner"}:
            raise RemoteError("bad_request", "member.add takes {id, address, learner}")
        node_id = _member_id(args.get("id"))
        address = args.get("address")
        if not isinstance(address, str) or len(address) > MAX_ADDRESS_CHARS:
            raise RemoteError(
                "bad_request", f"member.add: an address is HOST:PORT of at most {MAX_ADDRESS_CHARS}"
            )
        try:
            split_address(address)
        except ValueError as exc:
            raise RemoteError("bad_request", f"member.add: {exc}") from None
        learner = args.get("learner", True)
        if not isinstance(learner, bool):
            raise RemoteError("bad_request", "member.add: learner is a bool")
        kind = ChangeKind.ADD_LEARNER if learner else ChangeKind.ADD_VOTER
        return Change(kind, node_id, address)
    if method == "member.promote":
        return Change(ChangeKind.PROMOTE, _member_id(args))
    if method == "member.remove":
        return Change(ChangeKind.REMOVE, _member_id(args))
    raise RemoteError("bad_request", f"no method {method!r}")


def _member_id(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MEMBER_ID:
        raise RemoteError(
            "bad_request", f"a member id is an int in 0..{MAX_MEMBER_ID}, not {value!r}"
        )
    return value
