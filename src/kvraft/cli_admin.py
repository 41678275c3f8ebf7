"""``kvraft leader transfer --to ID``: the operator's leadership commands.

A transfer asks the current leader (found by asking every node's status) to
hand its leadership to node ``ID`` (Raft thesis §3.10): it stops taking
writes, brings ``ID`` up to date, tells it to campaign, and answers once
``ID`` leads, or gives up after one election timeout and leads on. Clients
retry the writes it refused at the new leader. Exit codes as for every
command (:mod:`kvraft.cli`): 0 moved (or ``ID`` already led), 1 refused or
failed (``ID`` is not a peer, did not take over in time; a token that is not
``admin``), 2 usage, 3 no node answered or none leads.
"""

from __future__ import annotations

import json

import click

from kvraft.cli_clients import parse_servers, servers_option
from kvraft.cli_common import EXIT_OP_ERROR, EXIT_UNAVAILABLE, credentials, fail
from kvraft.errors import RemoteError, RpcError, Unauthorized, Unavailable


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
    try:
        outcome = transfer_leadership(
            parse_servers(servers), target, timeout, token=creds.token, ssl=creds.ssl
        )
    except Unavailable as exc:
        fail(f"cluster unavailable: {exc}", EXIT_UNAVAILABLE)
    except Unauthorized as exc:
        fail(f"Unauthorized: {exc}", EXIT_OP_ERROR)
    except RemoteError as exc:
        fail(f"transfer to n{target} {_verb(exc.code)}: {exc.message}", EXIT_OP_ERROR)
    except RpcError as exc:
        fail(f"cluster unavailable: the leader did not answer: {exc}", EXIT_UNAVAILABLE)
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
