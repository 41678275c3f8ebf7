"""The ``kvraft`` command line, built on click: the command group and :func:`main`.

Exit codes scripts can rely on:

====  =====================================================================
0     ok
1     operation error: NoKey, VersionMismatch, Maybe (a txn's failed versioned
      op too: nothing applied), a bad value (too big),
      a server that cannot start (port in use, another node's data dir)
2     usage error: a bad flag or argument (click's own, and our checks)
3     cluster unavailable: no answer within ``--deadline``, or no node reachable
====  =====================================================================

A mistake of the user's ends with one line on stderr, ``kvraft ...: message``,
never a traceback: :func:`main` prints click's usage errors on one line, and
each command turns the errors it expects into :func:`fail`.

``--servers`` defaults to ``$KVRAFT_SERVERS``, else the local cluster that
``kvraft cluster`` starts with its defaults (127.0.0.1:7001..7003).

The subcommands live with their kind: :mod:`kvraft.cli_servers` (``server``,
``cluster``), :mod:`kvraft.cli_clients` (``get``, ``put``, ``status``,
``bench``), :mod:`kvraft.cli_admin` (``leader transfer``, ``member``) and
:mod:`kvraft.cli_backup` (``snapshot save|status|restore``); exit codes and
:func:`fail` are :mod:`kvraft.cli_common`. Their public names are re-exported
here, so ``from kvraft.cli import ...`` still finds them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from kvraft import __version__
from kvraft.cli_admin import leader, member
from kvraft.cli_backup import snapshot
from kvraft.cli_clients import (
    bench,
    compact_command,
    deadline_option,
    delete_command,
    get,
    parse_servers,
    parse_version,
    put,
    servers_option,
    set_command,
    status,
    txn,
    watch_command,
)
from kvraft.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OP_ERROR,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    fail,
)
from kvraft.cli_leases import lease_group, lock_command
from kvraft.cli_servers import cluster, server
from kvraft.errors import one_line

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OP_ERROR",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "LOG_FORMAT",
    "bench",
    "cli",
    "cluster",
    "deadline_option",
    "fail",
    "get",
    "main",
    "parse_servers",
    "parse_version",
    "put",
    "server",
    "servers_option",
    "status",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="kvraft", message="%(prog)s %(version)s")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
    help="Log level on stderr (default: info for server and cluster, warning otherwise).",
)
@click.option(
    "--token",
    envvar="KVRAFT_TOKEN",
    default=None,
    help="The client token to present (servers with --auth-token-file); default $KVRAFT_TOKEN.",
)
@click.option(
    "--cacert",
    envvar="KVRAFT_CACERT",
    type=click.Path(dir_okay=False),
    default=None,
    help="Connect with TLS, checking servers against this CA (PEM); default $KVRAFT_CACERT.",
)
@click.option(
    "--cert",
    envvar="KVRAFT_CERT",
    type=click.Path(dir_okay=False),
    default=None,
    help="TLS: this client's certificate (servers with --client-cert-auth); $KVRAFT_CERT.",
)
@click.option(
    "--key",
    envvar="KVRAFT_KEY",
    type=click.Path(dir_okay=False),
    default=None,
    help="TLS: the client certificate's key; default $KVRAFT_KEY.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    log_level: str | None,
    token: str | None,
    cacert: str | None,
    cert: str | None,
    key: str | None,
) -> None:
    """kvraft: a fault-tolerant, linearizable key-value service replicated with Raft.

    \b
    Start a local 3-node cluster in one terminal:
      kvraft cluster
    and use it from another:
      kvraft put greeting hello
      kvraft get greeting
      kvraft status
      kvraft bench --clients 64 --duration 10
      kvraft leader transfer --to 2
      kvraft member list
      kvraft snapshot save ./backup.kvb

    Secured clusters (docs/security.md): kvraft --cacert ca.pem --token T get KEY.

    Exit codes: 0 ok, 1 operation error (NoKey, VersionMismatch, Maybe, bad
    value, Unauthorized, a server that cannot start), 2 usage error, 3
    cluster unavailable.
    """
    serving = ctx.invoked_subcommand in ("server", "cluster")
    level = (log_level or ("info" if serving else "warning")).upper()
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)


for _command in (server, cluster, get, put, status, bench, leader, member):
    cli.add_command(_command)
cli.add_command(set_command)  # the data API's commands (docs/data-model.md)
cli.add_command(delete_command)
cli.add_command(txn)
cli.add_command(snapshot)  # backups (kvraft snapshot save|status|restore)
cli.add_command(watch_command)  # watch and compaction (docs/data-model.md, "Watch")
cli.add_command(compact_command)
cli.add_command(lease_group)  # leases and the lock command (docs/locks.md)
cli.add_command(lock_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command line and exit; usage errors are one line, not click's three."""
    try:
        rv = cli.main(args=argv, prog_name="kvraft", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "kvraft"
        hint = f" (see '{where} --help')"
        click.echo(f"{where}: {one_line(exc.format_message())}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"kvraft: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("kvraft: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)
