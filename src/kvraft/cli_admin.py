"""``kvraft leader transfer --to ID`` and ``kvraft member ...``: the operator's commands.

A transfer asks the current leader (found by asking every node's status) to
hand its leadership to node ``ID`` (Raft thesis §3.10): it stops taking
writes, brings ``ID`` up to date, tells it to campaign, and answers once
``ID`` leads, or gives up after one election timeout and leads on. Clients
retry the writes it refused at the new leader. Exit codes as for every
command (:mod:`kvraft.cli`): 0 moved (or ``ID`` already led), 1 refused or
failed (``ID`` is not a peer, did not take over in time; a token that is not
``admin``), 2 usage, 3 no node answered or none leads.

``kvraft member list | add ID ADDRESS [--learner] | promote ID | remove ID``:
the cluster's configuration (Raft thesis §4.1, one server at a time; see
docs/membership.md), each sent to the leader. ``add --learner`` adds a node
that receives the log but does not vote; ``promote`` makes it a voter once it
is within the leader's bound (refused with the lag otherwise); ``remove``
takes a voter or learner out (the leader too: it steps down once that
commits). Exit 0 done, 1 refused or not committed in time, 3 unavailable.
"""

from __future__ import annotations

import json
from typing import Any

import click

from kvraft.addresses import split_address
from kvraft.cli_clients import parse_servers, servers_option
from kvraft.cli_common import (
    credentials,
    leader_call_failures,
)


@click.group()
def leader() -> None:
    """Leadership of the cluster: move it before maintenance (kvraft leader transfer --to ID)."""


@leader.command()
@click.option(
    "--to",
    "target",
    type=click.IntRange(min=0),
    required=True,
    help="The node id to hand leadership to (one of --peers).",
)
@servers_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each node's status and for the transfer's answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print {from, to, elapsed_ms} as JSON.")
def transfer(target: int, servers: str | None, timeout: float, as_json: bool) -> None:
    """Hand the leadership to node --to; answers once it leads (exit 1 if it did not)."""
    from kvraft.client.admin import transfer_leadership

    creds = credentials()
    with leader_call_failures(
        lambda exc: f"transfer to n{target} {_verb(exc.code)}: {exc.message}"
    ):
        outcome = transfer_leadership(
            parse_servers(servers), target, timeout, token=creds.token, ssl=creds.ssl
        )
    elapsed_ms = round(outcome.elapsed_s * 1000)
    if as_json:
        document = {"from": outcome.old_leader, "to": outcome.new_leader, "elapsed_ms": elapsed_ms}
        click.echo(json.dumps(document))
    elif outcome.old_leader == outcome.new_leader:
        click.echo(f"n{target} already leads")
    else:
        click.echo(f"leadership moved from n{outcome.old_leader} to n{target} in {elapsed_ms} ms")


def _verb(code: str) -> str:
    return {"transfer_refused": "refused", "transfer_failed": "failed"}.get(
        code, f"failed ({code})"
    )


# ---------------------------------------------------------------- kvraft member

_timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each node's status and for the leader's answer.",
)


@click.group()
def member() -> None:
    """The cluster's members: list, add (as a learner), promote, remove."""


def _call(servers: str | None, method: str, args: Any, timeout: float) -> dict[str, Any]:
    from kvraft.client.admin import member_call

    creds = credentials()
    verbs = {"member_refused": "refused", "member_failed": "failed"}
    with leader_call_failures(
        lambda exc: f"{method} {verbs.get(exc.code, exc.code)}: {exc.message}"
    ):
        return member_call(
            parse_servers(servers), method, args, timeout, token=creds.token, ssl=creds.ssl
        )
    raise AssertionError("unreachable")  # fail() exits


def _done(what: str, result: dict[str, Any]) -> None:
    voters = ",".join(f"n{n}" for n in result["voters"])
    learners = ",".join(f"n{n}" for n in result["learners"]) or "none"
    click.echo(f"{what} at index {result['index']}: voters {voters}, learners {learners}")


@member.command("list")
@servers_option
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print the leader's answer as JSON.")
def list_members(servers: str | None, timeout: float, as_json: bool) -> None:
    """The configuration as the leader sees it, with each member's match index."""
    result = _call(servers, "member.list", None, timeout)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{'ID':>4}  {'ROLE':<8}  {'ADDRESS':<24}  MATCH")
    for row in result["members"]:
        leader = " (leader)" if row["id"] == result["leader"] else ""
        click.echo(
            f"{row['id']:>4}  {row['role']:<8}  {row['address'] or '-':<24}  "
            f"{row.get('match_index', '-')}{leader}"
        )
    retired = result.get("retired") or []  # (a server before retired ids sends none)
    if retired:
        click.echo(f"retired ids (never to be added again): {', '.join(map(str, retired))}")
    state = "committed" if result["committed"] else "NOT yet committed"
    click.echo(
        f"configuration at index {result['config_index']} ({state}); "
        f"leader last index {result['last_index']}"
    )


@member.command()
@click.argument("node_id", metavar="ID", type=click.IntRange(min=0))
@click.argument("address", metavar="ADDRESS")
@click.option("--learner", is_flag=True, help="Add as a learner (no vote); promote it later.")
@servers_option
@_timeout_option
def add(node_id: int, address: str, learner: bool, servers: str | None, timeout: float) -> None:
    """Add node ID, reachable at ADDRESS (HOST:PORT); then start it with --join."""
    try:
        split_address(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from None
    args = {"id": node_id, "address": address, "learner": learner}
    _done(
        f"added n{node_id}" + (" as a learner" if learner else ""),
        _call(servers, "member.add", args, timeout),
    )


@member.command()
@click.argument("node_id", metavar="ID", type=click.IntRange(min=0))
@servers_option
@_timeout_option
def promote(node_id: int, servers: str | None, timeout: float) -> None:
    """Make learner ID a voter (refused while it lags the leader by more than the bound)."""
    _done(f"promoted n{node_id}", _call(servers, "member.promote", node_id, timeout))


@member.command()
@click.argument("node_id", metavar="ID", type=click.IntRange(min=0))
@servers_option
@_timeout_option
def remove(node_id: int, servers: str | None, timeout: float) -> None:
    """Remove member ID (voter or learner); a removed leader steps down once it commits."""
    _done(f"removed n{node_id}", _call(servers, "member.remove", node_id, timeout))
