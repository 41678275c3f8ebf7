"""The ``kvraft`` command line (DESIGN 1.3), built on click.

Exit codes scripts can rely on:

====  =====================================================================
0     ok
1     operation error: NoKey, VersionMismatch, Maybe, a bad value (too big),
      a server that cannot start (port in use, another node's data dir)
2     usage error: a bad flag or argument (click's own, and our checks)
3     cluster unavailable: no answer within ``--deadline``, or no node reachable
====  =====================================================================

A mistake of the user's ends with one line on stderr, ``kvraft ...: message``,
never a traceback: :func:`main` prints click's usage errors on one line, and
each command turns the errors it expects into :func:`fail`.

``--servers`` defaults to ``$KVRAFT_SERVERS``, else the local cluster that
``kvraft cluster`` starts with its defaults (127.0.0.1:7001..7003).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from kvraft.errors import KVError, StorageError, Unavailable, one_line
from kvraft.local_cluster import (
    DEFAULT_BASE_PORT,
    NodeProcesses,
    check_cluster_size,
    default_servers,
    describe_os_error,
    print_banner,
)
from kvraft.status_table import format_status_table, short_reason, status_summary

EXIT_OK, EXIT_OP_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

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


def fail(message: str, code: int) -> NoReturn:
    """Print ``kvraft: message`` on stderr and exit with ``code``."""
    click.echo(f"kvraft: {one_line(message)}", err=True)
    sys.exit(code)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
    help="Log level on stderr (default: info for server and cluster, warning otherwise).",
)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """kvraft: a fault-tolerant, linearizable key-value service replicated with Raft.

    \b
    Start a local 3-node cluster in one terminal:
      kvraft cluster
    and use it from another:
      kvraft put greeting hello
      kvraft get greeting
      kvraft status
      kvraft bench --clients 64 --duration 10

    Exit codes: 0 ok, 1 operation error (NoKey, VersionMismatch, Maybe, bad
    value, a server that cannot start), 2 usage error, 3 cluster unavailable.
    """
    serving = ctx.invoked_subcommand in ("server", "cluster")
    level = (log_level or ("info" if serving else "warning")).upper()
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)


def _log_level(ctx: click.Context) -> str:
    """The effective ``--log-level`` of this invocation, to hand to child nodes."""
    chosen = ctx.find_root().params.get("log_level")
    return str(chosen or "info").lower()


# ---------------------------------------------------------------------- servers


@cli.command()
@click.option("--id", "node_id", type=click.IntRange(min=0), required=True, help="This node's id.")
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where to listen.")
@click.option(
    "--peers",
    required=True,
    metavar="ID=HOST:PORT,...",
    help="Every member, itself included, each at an address that reaches it.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="This node's directory (created if missing; refused if another node's).",
)
@click.option("--cluster-id", default="kvraft", show_default=True, help="Name of the cluster.")
@click.option("--test-hooks", is_flag=True, help="Serve the raft.* RPCs the test suite uses.")
@click.option(
    "--snapshot-threshold",
    type=click.IntRange(min=0),
    default=None,
    help="Snapshot when the Raft state on disk passes this many bytes (default 64 MiB; 0: never).",
)
@click.option("--tick-ms", type=click.FloatRange(min=1), default=10.0, show_default=True)
@click.option(
    "--election-ticks",
    type=click.IntRange(min=2),
    default=15,
    show_default=True,
    help="Election timeout in ticks (randomized up to twice this).",
)
@click.option("--heartbeat-ticks", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--max-value-bytes", type=click.IntRange(min=1), default=None, help="Default 1 MiB.")
@click.option(
    "--max-frame-bytes", type=click.IntRange(min=1024), default=None, help="Default 16 MiB."
)
def server(
    node_id: int,
    listen: str,
    peers: str,
    data_dir: Path,
    cluster_id: str,
    test_hooks: bool,
    snapshot_threshold: int | None,
    tick_ms: float,
    election_ticks: int,
    heartbeat_ticks: int,
    max_value_bytes: int | None,
    max_frame_bytes: int | None,
) -> None:
    """Run one server node in the foreground.

    Ctrl-C or SIGTERM stops it cleanly; SIGKILL loses nothing acknowledged.
    Example:

    \b
      kvraft server --id 0 --listen 127.0.0.1:7001 \\
        --peers 0=127.0.0.1:7001,1=127.0.0.1:7002,2=127.0.0.1:7003 \\
        --data-dir ./data/n0
    """
    from kvraft.kv_protocol import DEFAULT_MAX_VALUE_BYTES
    from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES
    from kvraft.server.options import (
        DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
        ServerOptions,
        parse_peers,
    )
    from kvraft.server.process import run_server

    try:
        threshold: int | None = (
            DEFAULT_SNAPSHOT_THRESHOLD_BYTES if snapshot_threshold is None else snapshot_threshold
        )
        options = ServerOptions(
            node_id=node_id,
            listen=listen,
            peers=parse_peers(peers),
            data_dir=data_dir,
            cluster_id=cluster_id,
            test_hooks=test_hooks,
            snapshot_threshold_bytes=threshold or None,
            tick_interval_s=tick_ms / 1000,
            election_timeout_ticks=election_ticks,
            heartbeat_interval_ticks=heartbeat_ticks,
            max_value_bytes=max_value_bytes or DEFAULT_MAX_VALUE_BYTES,
            max_frame_bytes=max_frame_bytes or DEFAULT_MAX_FRAME_BYTES,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        run_server(options)
    except StorageError as exc:
        fail(str(exc), EXIT_OP_ERROR)
    except OSError as exc:
        fail(f"n{node_id}: cannot listen on {listen}: {describe_os_error(exc)}", EXIT_OP_ERROR)


@cli.command()
@click.option(
    "--nodes",
    type=click.IntRange(min=1, max=9),
    default=3,
    show_default=True,
    help="How many nodes (3 or 5 tolerate 1 or 2 failures).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("data"),
    show_default=True,
    help="Node i keeps its data in DATA_DIR/nI; rerun with the same dir to resume.",
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_BASE_PORT,
    show_default=True,
    help="Node i listens on BASE_PORT + i.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.pass_context
def cluster(ctx: click.Context, nodes: int, data_dir: Path, base_port: int, host: str) -> None:
    """Run a local cluster of NODES servers in the foreground.

    Prints the nodes' addresses and how to reach them; Ctrl-C (or SIGTERM)
    stops every node cleanly, and running it again with the same --data-dir
    resumes the same data. If a node cannot start (a port in use, a data dir
    of another cluster) or dies, the others are stopped and the exit status
    is 1. The top-level --log-level is passed on to the nodes.
    """
    if base_port + nodes - 1 > 65535:
        raise click.BadParameter(
            f"ports {base_port}..{base_port + nodes - 1} go past 65535", param_hint="--base-port"
        )
    if data_dir.exists() and not data_dir.is_dir():
        raise click.BadParameter(f"{data_dir} is not a directory", param_hint="--data-dir")
    check_cluster_size(data_dir, nodes)
    addresses = {i: f"{host}:{base_port + i}" for i in range(nodes)}
    peers = ",".join(f"{i}={a}" for i, a in addresses.items())
    log_level = _log_level(ctx)
    supervisor = NodeProcesses()
    # Handlers first, so a Ctrl-C while nodes start still stops the ones started.
    signal.signal(signal.SIGINT, supervisor.stop)
    signal.signal(signal.SIGTERM, supervisor.stop)
    for i, address in addresses.items():
        cmd = [sys.executable, "-m", "kvraft", "--log-level", log_level, "server"]
        cmd += ["--id", str(i), "--listen", address, "--peers", peers]
        cmd += ["--data-dir", str(data_dir / f"n{i}")]
        if not supervisor.start(cmd):
            break
    print_banner(data_dir, addresses, supervisor.procs)
    sys.exit(EXIT_OK if supervisor.watch() else EXIT_OP_ERROR)


# ---------------------------------------------------------------------- clients


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

    client = Client(parse_servers(servers), deadline=deadline)
    try:
        return _run_op(lambda: op(client))
    finally:
        client.close()


@cli.command()
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


@cli.command()
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


@cli.command()
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

    rows = fetch_statuses(parse_servers(servers), timeout)
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


# ------------------------------------------------------------------------ bench


@cli.command()
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
    config = BenchConfig(
        servers=tuple(parse_servers(servers)),
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


# ------------------------------------------------------------------------- main


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
