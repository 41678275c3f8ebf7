"""``kvraft get``, ``put``, ``status`` and ``bench``: the commands that talk to a running cluster.

Each builds its client from ``--servers`` (default ``$KVRAFT_SERVERS``, else
the local cluster that ``kvraft cluster`` starts with its defaults,
127.0.0.1:7001..7003) and turns the errors a user can meet into a one-line
message and an exit code (:mod:`kvraft.cli_common`). The client, the admin
queries and the load generator are imported inside the commands, so
``kvraft --help`` does not load them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kvraft.cli_common import EXIT_OP_ERROR, EXIT_UNAVAILABLE, credentials, fail
from kvraft.errors import KVError, Unavailable
from kvraft.local_cluster import default_servers, describe_os_error
from kvraft.status_table import format_status_table, short_reason, status_summary

T = TypeVar("T")


def parse_servers(text: str | None) -> list[str]:
    """``--servers`` / ``$KVRAFT_SERVERS`` (comma separated), else the local cluster.

    A malformed address is a usage error (exit 2).
    """
    from kvraft.addresses import split_address

    text = text or os.environ.get("KVRAFT_SERVERS")
    if not text:
        return default_servers()
    servers = [s.strip() for s in text.split(",") if s.strip()]
    if not servers:
        raise click.BadParameter("no server addresses given", param_hint="--servers")
    for server in servers:
        try:
            split_address(server)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--servers") from None
    return servers


def parse_version(ctx: click.Context, param: click.Parameter, value: Any) -> int:
    """``--version``: an integer in 0..MAX_VERSION, with a message that says so."""
    from kvraft.kv_protocol import MAX_VERSION

    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an integer") from None
    if not 0 <= number <= MAX_VERSION:
        raise click.BadParameter(f"{number} is not in 0..{MAX_VERSION}")
    return number


servers_option = click.option(
    "--servers",
    envvar="KVRAFT_SERVERS",
    metavar="HOST:PORT,...",
    help="The cluster's addresses (default: $KVRAFT_SERVERS, else 127.0.0.1:7001-7003).",
)
deadline_option = click.option(
    "--deadline",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to keep trying before reporting the cluster unavailable (exit 3).",
)


def _run_op(fn: Callable[[], T]) -> T:
    """``fn()``, with the errors a user can meet turned into a message and exit code."""
    try:
        return fn()
    except Unavailable as exc:
        fail(f"cluster unavailable: {exc}", EXIT_UNAVAILABLE)
    except KVError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_OP_ERROR)


def _with_client(servers: str | None, deadline: float, op: Callable[[Any], T]) -> T:
    from kvraft.client.client import Client

    creds = credentials()
    client = Client(parse_servers(servers), deadline=deadline, token=creds.token, ssl=creds.ssl)
    try:
        return _run_op(lambda: op(client))
    finally:
        client.close()


@click.command()
@click.argument("key")
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print {key, value, version} as JSON.")
def get(key: str, servers: str | None, deadline: float, as_json: bool) -> None:
    """Print KEY's value and version (exit 1 if there is no such key)."""
    value, version = _with_client(servers, deadline, lambda c: c.get(key))
    if as_json:
        click.echo(json.dumps({"key": key, "value": value, "version": version}))
    else:
        click.echo(f"{value}\t(version {version})")


@click.command()
@click.argument("key")
@click.argument("value")
@click.option(
    "--version",
    "version",
    default="0",
    callback=parse_version,
    metavar="N",
    show_default=True,
    help="The key's current version (0 creates a new key).",
)
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print {key, version} as JSON.")
def put(
    key: str, value: str, version: int, servers: str | None, deadline: float, as_json: bool
) -> None:
    """Set KEY to VALUE if KEY is at --version; print the new version.

    VALUE "-" reads the value from stdin; a VALUE that starts with "-" goes
    after "--" (kvraft put KEY -- -5). Exit 1 with VersionMismatch if the
    key is at another version, NoKey if --version > 0 and there is no such
    key, Maybe if a retried put cannot tell whether its first attempt applied.
    """
    if value == "-":
        value = sys.stdin.read()
    new_version = _with_client(servers, deadline, lambda c: c.put(key, value, version))
    if as_json:
        click.echo(json.dumps({"key": key, "version": new_version}))
    else:
        click.echo(f"ok\t(version {new_version})")


@click.command()
@servers_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds to wait for each node.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per node, as a list.")
def status(servers: str | None, timeout: float, as_json: bool) -> None:
    """Show every node: role, term, commit and applied index, log, snapshot, leader.

    Unreachable nodes are listed as such. Exit 3 if no node answers.
    """
    from kvraft.client.admin import fetch_statuses

    creds = credentials()
    rows = fetch_statuses(parse_servers(servers), timeout, token=creds.token, ssl=creds.ssl)
    for row in rows:
        if not row.get("reachable"):
            row["error"] = short_reason(str(row.get("error", "")))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(format_status_table(rows))
        click.echo(status_summary(rows))
    if not any(r.get("reachable") for r in rows):
        sys.exit(EXIT_UNAVAILABLE)


@click.command()
@servers_option
@click.option(
    "--clients",
    type=click.IntRange(min=1, max=10000),
    default=64,
    show_default=True,
    help="Concurrent clients, each with one request in flight.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds measured, after the warm-up.",
)
@click.option(
    "--warmup",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds run first and not measured.",
)
@click.option(
    "--workload",
    type=click.Choice(["put", "get", "mixed"]),
    default="put",
    show_default=True,
    help="put: versioned puts; get: gets of preloaded keys; mixed: half and half.",
)
@click.option(
    "--value-size", type=click.IntRange(min=0), default=100, show_default=True, help="Bytes."
)
@click.option(
    "--keys",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Distinct keys (for puts, at least --clients: each put in flight owns its key).",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds an operation may retry before it counts as unavailable.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Live progress line on stderr (default: when stderr is a terminal).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JSON to this file ('-': stdout, instead of the table).",
)
def bench(
    servers: str | None,
    clients: int,
    duration: float,
    warmup: float,
    workload: str,
    value_size: int,
    keys: int,
    deadline: float,
    progress: bool | None,
    json_path: Path | None,
) -> None:
    """Load a running cluster and report throughput and latency.

    CLIENTS concurrent clients (one event loop, one request in flight each)
    run the workload for --warmup + --duration seconds; the table gives the
    throughput and the p50/p95/p99/max latency of the measured part. Every
    operation goes through the Raft log, with fsync, as in production.
    """
    from kvraft.bench import BenchConfig, format_result, result_json, run_bench

    if workload in ("put", "mixed") and keys < clients:
        raise click.BadParameter(
            f"{keys} keys for {clients} clients: puts need at least one key per client",
            param_hint="--keys",
        )
    creds = credentials()
    config = BenchConfig(
        servers=tuple(parse_servers(servers)),
        token=creds.token,
        ssl=creds.ssl,
        clients=clients,
        duration_s=duration,
        warmup_s=warmup,
        workload=workload,  # type: ignore[arg-type]  # click.Choice checked it
        value_size=value_size,
        keys=keys,
        deadline_s=deadline,
    )
    show_progress = sys.stderr.isatty() if progress is None else progress
    try:
        result = run_bench(config, progress=show_progress)
    except Unavailable as exc:
        fail(f"cluster unavailable: {exc}", EXIT_UNAVAILABLE)
    except KVError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_OP_ERROR)
    to_stdout = json_path is not None and str(json_path) == "-"
    if not to_stdout:
        click.echo(format_result(result))
    if json_path is not None:
        text = json.dumps(result_json(result), indent=2)
        if to_stdout:
            click.echo(text)
        else:
            try:
                json_path.write_text(text + "\n")
            except OSError as exc:
                fail(f"cannot write {json_path}: {describe_os_error(exc)}", EXIT_OP_ERROR)
