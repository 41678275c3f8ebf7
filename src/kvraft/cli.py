"""The ``kvraft`` command line.

Exit codes scripts can rely on: 0 ok, 1 operation error (NoKey,
VersionMismatch, Maybe, bad value), 2 usage error (click's own), 3 cluster
unavailable. A mistake of the user's ends with a one-line message, never a
traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from kvraft.errors import KVError, StorageError, Unavailable

EXIT_OK, EXIT_OP_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
DEFAULT_BASE_PORT = 7001
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def default_servers(nodes: int = 3, base_port: int = DEFAULT_BASE_PORT) -> list[str]:
    return [f"127.0.0.1:{base_port + i}" for i in range(nodes)]


def parse_servers(text: str | None) -> list[str]:
    """``--servers`` / ``$KVRAFT_SERVERS`` (comma separated), else the local cluster."""
    from kvraft.rpc.transport import split_address

    text = text or os.environ.get("KVRAFT_SERVERS")
    if not text:
        return default_servers()
    servers = [s.strip() for s in text.split(",") if s.strip()]
    for server in servers:
        try:
            split_address(server)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--servers") from None
    return servers


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"kvraft: {message}", err=True)
    sys.exit(code)


servers_option = click.option(
    "--servers",
    envvar="KVRAFT_SERVERS",
    help="Comma-separated host:port list (default: $KVRAFT_SERVERS, else the local cluster).",
)
deadline_option = click.option(
    "--deadline",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to keep trying before reporting the cluster unavailable (exit 3).",
)


@click.group()
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def cli(log_level: str) -> None:
    """kvraft: a fault-tolerant, linearizable key-value service replicated with Raft."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)


@cli.command()
@click.option("--id", "node_id", type=click.IntRange(min=0), required=True, help="This node's id.")
@click.option("--listen", required=True, help="host:port to listen on.")
@click.option(
    "--peers", required=True, help="Every member, itself included: 0=host:port,1=host:port,..."
)
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
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
@click.option("--heartbeat-ticks", type=click.IntRange(min=1), default=5, show_default=True)
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
    """Run one server node in the foreground (Ctrl-C / SIGTERM stops it cleanly)."""
    from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES
    from kvraft.server.commands import DEFAULT_MAX_VALUE_BYTES
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
        fail(f"cannot listen on {listen}: {exc.strerror or exc}", EXIT_OP_ERROR)


@cli.command()
@click.option("--nodes", type=click.IntRange(min=1, max=9), default=3, show_default=True)
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=Path("data"), show_default=True
)
@click.option("--base-port", type=click.IntRange(1, 65000), default=DEFAULT_BASE_PORT)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.pass_context
def cluster(ctx: click.Context, nodes: int, data_dir: Path, base_port: int, host: str) -> None:
    """Run a local cluster of NODES servers in the foreground; Ctrl-C stops them all."""
    addresses = {i: f"{host}:{base_port + i}" for i in range(nodes)}
    peers = ",".join(f"{i}={a}" for i, a in addresses.items())
    log_level = ctx.parent.params["log_level"] if ctx.parent else "info"
    procs: list[subprocess.Popen[bytes]] = []
    for i, address in addresses.items():
        cmd = [sys.executable, "-m", "kvraft", "--log-level", log_level, "server"]
        cmd += ["--id", str(i), "--listen", address, "--peers", peers]
        cmd += ["--data-dir", str(data_dir / f"n{i}")]
        procs.append(subprocess.Popen(cmd))
    servers = ",".join(addresses.values())
    click.echo(f"kvraft: {nodes}-node cluster, data under {data_dir}/")
    for i, address in addresses.items():
        click.echo(f"  n{i}  {address}")
    click.echo(f"Try, in another terminal:\n  export KVRAFT_SERVERS={servers}")
    click.echo("  kvraft put greeting hello && kvraft get greeting && kvraft status")
    click.echo("Ctrl-C stops all nodes; running this again resumes the same data.")

    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while any(p.poll() is None for p in procs):
        for i, proc in enumerate(procs):
            rc = proc.poll()
            if rc not in (None, 0) and not stopping:
                click.echo(f"kvraft: node n{i} exited with status {rc}; stopping", err=True)
                code = EXIT_OP_ERROR
                stop(signal.SIGTERM, None)
        time.sleep(0.2)
    sys.exit(code)


def _client(servers: str | None, deadline: float) -> Any:
    from kvraft.client.client import Client

    return Client(parse_servers(servers), deadline=deadline)


def _run_op(fn: Any) -> Any:
    try:
        return fn()
    except Unavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except KVError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_OP_ERROR)


@cli.command()
@click.argument("key")
@servers_option
@deadline_option
@click.option("--json", "as_json", is_flag=True, help="Print {key, value, version} as JSON.")
def get(key: str, servers: str | None, deadline: float, as_json: bool) -> None:
    """Print KEY's value and version."""
    client = _client(servers, deadline)
    try:
        value, version = _run_op(lambda: client.get(key))
    finally:
        client.close()
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
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The key's current version (0 creates a new key).",
)
@servers_option
@deadline_option
def put(key: str, value: str, version: int, servers: str | None, deadline: float) -> None:
    """Set KEY to VALUE if its version is --version; print the new version."""
    client = _client(servers, deadline)
    try:
        new_version = _run_op(lambda: client.put(key, value, version))
    finally:
        client.close()
    click.echo(f"ok\t(version {new_version})")


@cli.command()
@servers_option
@click.option("--timeout", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the statuses as JSON.")
def status(servers: str | None, timeout: float, as_json: bool) -> None:
    """Show every node: role, term, commit and applied index, log, leader."""
    from kvraft.client.admin import fetch_statuses

    rows = fetch_statuses(parse_servers(servers), timeout)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(format_status_table(rows))
    if not any(r.get("reachable") for r in rows):
        sys.exit(EXIT_UNAVAILABLE)


def format_status_table(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("id", "id"),
        ("address", "address"),
        ("role", "role"),
        ("term", "term"),
        ("commit", "commit_index"),
        ("applied", "applied_index"),
        ("log", "log_length"),
        ("snapshot", "snapshot_index"),
        ("leader", "leader_id"),
    ]
    table = [[name for name, _ in cols]]
    for row in rows:
        if not row.get("reachable"):
            table.append(["?", row["address"], "unreachable"] + [""] * (len(cols) - 3))
        else:
            table.append([str(row.get(field, "")) for _, field in cols])
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table)


def main() -> None:
    cli(prog_name="kvraft")
