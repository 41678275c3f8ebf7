"""``kvraft lease grant|keepalive|revoke|ttl`` and ``kvraft lock``: leases from the shell.

::

    kvraft lease grant TTL [--json]            # prints the new lease's id
    kvraft lease keepalive ID [--once]         # renews every TTL/3 until Ctrl-C (or once)
    kvraft lease revoke ID                     # deletes its keys; prints how many
    kvraft lease ttl ID [--keys] [--json]      # granted and remaining TTL (and keys)
    kvraft set KEY VALUE --lease ID            # (and put): attach the key to the lease
    kvraft lock NAME [--ttl N] -- COMMAND...   # run COMMAND while holding the lock

Lease ids are printed and read as decimal integers. ``lease grant`` prints
``ID<TAB>(ttl N)``; ``lease ttl`` prints ``ID<TAB>granted N<TAB>remaining S``
then, with ``--keys``, one key a line. An unknown (expired, revoked) lease
exits 1 with ``LeaseNotFound``.

``kvraft lock`` holds ``Lock(client, NAME, ttl=N)`` (default 10 s: a lock
taken from a shell is always on a lease, so a killed ``kvraft lock`` frees it
within N seconds) while COMMAND runs, then releases it; the exit status is
COMMAND's, as with ``etcdctl lock``. COMMAND gets the lock's fencing token
in ``$KVRAFT_LOCK_TOKEN`` (pass it to whatever the lock guards:
``docs/locks.md``). If the lock's lease is lost while COMMAND runs,
COMMAND is sent SIGTERM and ``kvraft lock`` exits 1 saying so. A COMMAND that
cannot be started exits 127. Ctrl-C while waiting exits 130.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from kvraft.cli_clients import _to_json, _with_client, deadline_option, servers_option
from kvraft.cli_common import EXIT_OP_ERROR, fail

# How often ``kvraft lock`` checks, while COMMAND runs, whether the lock was lost.
LOCK_CHECK_S = 0.1
DEFAULT_LOCK_TTL_S = 10
EXIT_CANNOT_RUN = 127


def _checked_int(value: Any, what: str, error: Callable[[int], str | None]) -> int:
    """``value`` as a decimal int that ``error`` finds nothing wrong with; else a usage error."""
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not {what}") from None
    why = error(number)
    if why is not None:
        raise click.BadParameter(why)
    return number


def _lease_id(ctx: click.Context, param: click.Parameter, value: Any) -> int:
    from kvraft.lease_protocol import lease_id_error

    return _checked_int(value, "a lease id (a decimal integer)", lease_id_error)


def _ttl(ctx: click.Context, param: click.Parameter, value: Any) -> int | None:
    from kvraft.lease_protocol import check_ttl_error

    if value is None:
        return None
    return _checked_int(value, "a whole number of seconds", check_ttl_error)


@click.group("lease")
def lease_group() -> None:
    """Grant, renew, revoke and read leases (keys on a lease go when it does)."""


@lease_group.command("grant")
@click.argument("ttl", callback=_ttl)
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print {id, ttl} as JSON.")
def grant(ttl: int, servers: str | None, deadline: float, as_json: bool) -> None:
    """Grant a lease of TTL seconds; print its id."""
    lease = _with_client(servers, deadline, lambda c: c.lease_grant(ttl))
    if as_json:
        click.echo(json.dumps({"id": lease.id, "ttl": lease.ttl}))
    else:
        click.echo(f"{lease.id}\t(ttl {lease.ttl})")


@lease_group.command("keepalive")
@click.argument("lease_id", metavar="ID", callback=_lease_id)
@click.option("--once", is_flag=True, help="Renew once and exit (default: until Ctrl-C).")
@servers_option
@deadline_option
def keepalive(lease_id: int, once: bool, servers: str | None, deadline: float) -> None:
    """Renew lease ID: once, or every TTL/3 until Ctrl-C (exit 1 once it is gone)."""

    def renew(client: Any) -> None:
        while True:
            ttl = client.lease_keepalive(lease_id)
            click.echo(f"{lease_id}\tkept alive\t(ttl {ttl})")
            if once:
                return
            time.sleep(ttl / 3)

    _with_client(servers, deadline, renew)


@lease_group.command("revoke")
@click.argument("lease_id", metavar="ID", callback=_lease_id)
@servers_option
@deadline_option
def revoke(lease_id: int, servers: str | None, deadline: float) -> None:
    """Revoke lease ID and delete its keys; print how many."""
    deleted = _with_client(servers, deadline, lambda c: c.lease_revoke(lease_id))
    click.echo(f"revoked {lease_id}\t(deleted {deleted})")


@lease_group.command("ttl")
@click.argument("lease_id", metavar="ID", callback=_lease_id)
@click.option("--keys", is_flag=True, help="List the keys attached to the lease too.")
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def ttl_command(
    lease_id: int, keys: bool, servers: str | None, deadline: float, as_json: bool
) -> None:
    """Print lease ID's granted TTL and the seconds the leader gives it still."""
    result = _with_client(servers, deadline, lambda c: c.lease_ttl(lease_id, keys))
    if as_json:
        click.echo(json.dumps(_to_json(result)))
        return
    click.echo(f"{lease_id}\tgranted {result.granted_ttl}\tremaining {result.remaining_s:.1f}")
    for key in result.keys:
        click.echo(key)


@click.command("lock", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--ttl",
    default=str(DEFAULT_LOCK_TTL_S),
    callback=_ttl,
    show_default=True,
    metavar="N",
    help="Seconds of the lock's lease: a killed holder frees the lock within N.",
)
@servers_option
@deadline_option
def lock_command(
    name: str, command: tuple[str, ...], ttl: int, servers: str | None, deadline: float
) -> None:
    """Run COMMAND while holding lock NAME; exit with COMMAND's status.

    \b
    kvraft lock nightly -- ./backup.sh --full
    """
    from kvraft.client.lock import Lock

    def hold(client: Any) -> int:
        lock = Lock(client, name, ttl=ttl)
        token = lock.acquire()
        try:
            return _run_holding(lock, token, command)
        finally:
            lock.release()

    code = _with_client(servers, deadline, hold)
    sys.exit(code)


def _run_holding(lock: Any, token: int, command: tuple[str, ...]) -> int:
    """Run ``command`` with the token in its environment; SIGTERM it if the lock is lost."""
    env = {**os.environ, "KVRAFT_LOCK_TOKEN": str(token)}
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        click.echo(f"kvraft: cannot run {command[0]!r}: {exc.strerror or exc}", err=True)
        return EXIT_CANNOT_RUN
    try:
        while True:
            try:
                return child.wait(LOCK_CHECK_S)
            except subprocess.TimeoutExpired:
                pass
            if lock.lost:
                child.terminate()
                child.wait()
                fail(
                    f"lock {lock.key!r} lost while the command ran (its lease expired)",
                    EXIT_OP_ERROR,
                )
    except BaseException:
        if child.poll() is None:
            child.terminate()
            child.wait()
        raise
