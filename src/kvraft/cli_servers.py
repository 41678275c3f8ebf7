"""``kvraft server`` and ``kvraft cluster``: the commands that run nodes in the foreground.

Flags, their checks and the signal handlers live here; what ``kvraft cluster``
runs (the size check, the node supervisor, the banner) is
:mod:`kvraft.local_cluster`, and the node itself is :mod:`kvraft.server.process`,
imported only when a server starts.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kvraft.cli_common import EXIT_OK, EXIT_OP_ERROR, fail
from kvraft.errors import RpcError, StorageError, Unauthorized, Unavailable
from kvraft.local_cluster import (
    DEFAULT_BASE_PORT,
    NodeProcesses,
    check_cluster_size,
    cluster_metrics_base_port,
    describe_os_error,
    ensure_peer_secret,
    print_banner,
)
from kvraft.raft.config import (
    DEFAULT_ELECTION_TIMEOUT_TICKS,
    DEFAULT_HEARTBEAT_INTERVAL_TICKS,
    DEFAULT_TICK_INTERVAL_S,
)
from kvraft.rpc.admission import (
    DEFAULT_FRAME_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
)

if TYPE_CHECKING:
    from kvraft.rpc.tokens import TokenTable

_FILE = click.Path(path_type=Path, dir_okay=False)


log = logging.getLogger("kvraft.cli")


def _read_secret(path: Path) -> bytes:
    """The secret in a secret file, stripped; a usage error (exit 2) if unreadable or short."""
    from kvraft.rpc.peer_auth import check_secret

    try:
        return check_secret(path.read_bytes())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--peer-secret-file") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise click.BadParameter(
            f"cannot read {path}: {reason}", param_hint="--peer-secret-file"
        ) from None


def _read_tokens(path: Path) -> TokenTable:
    """An --auth-token-file's table; a usage error (exit 2) naming the line, never the token."""
    from kvraft.rpc.tokens import parse_token_file
    from kvraft.server.service import METHOD_ROLES

    try:
        return parse_token_file(path.read_text(encoding="utf-8"), METHOD_ROLES)
    except ValueError as exc:  # UnicodeDecodeError included
        raise click.BadParameter(f"{path}: {exc}", param_hint="--auth-token-file") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise click.BadParameter(
            f"cannot read {path}: {reason}", param_hint="--auth-token-file"
        ) from None


def _log_level(ctx: click.Context) -> str:
    """The effective ``--log-level`` of this invocation, to hand to child nodes."""
    chosen = ctx.find_root().params.get("log_level")
    return str(chosen or "info").lower()


def _members_of(node_id: int, join: str, cluster_id: str) -> dict[int, str]:
    """--join: the members (id -> advertised address) that the running cluster names.

    Refuses (one line, exit 1) when no member answers, or when this node is
    not a member yet: `kvraft member add` comes first, so that a node never
    runs as a stray that no leader replicates to.
    """
    from kvraft.cli_clients import parse_servers
    from kvraft.client.admin import member_call

    servers = parse_servers(join)
    try:
        listing = member_call(servers, "member.list", None, 5.0)
    except (Unavailable, Unauthorized, RpcError) as exc:
        fail(f"n{node_id}: --join {join}: cannot list the members: {exc}", EXIT_OP_ERROR)
    members = {int(row["id"]): str(row["address"]) for row in listing["members"]}
    if node_id not in members:
        known = ",".join(f"n{m}" for m in sorted(members))
        fail(
            f"n{node_id}: not a member of the cluster at {join} ({known}): run"
            f" `kvraft member add {node_id} ADDRESS --learner` first",
            EXIT_OP_ERROR,
        )
    log.info("n%d joining cluster %s: members %s", node_id, cluster_id, members)
    return {m: a for m, a in members.items() if a}


@click.command()
@click.option("--id", "node_id", type=click.IntRange(min=0), required=True, help="This node's id.")
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where to listen.")
@click.option(
    "--peers",
    default=None,
    metavar="ID=HOST:PORT,...",
    help="Every member, itself included, each at an address that reaches it. It seeds a new"
    " cluster's configuration; after that (and with --join) it only says how to reach members.",
)
@click.option(
    "--join",
    default=None,
    metavar="HOST:PORT,...",
    help="Join a running cluster (after `kvraft member add`): ask these members who the members"
    " are. Implies --initial-cluster-state existing; --peers is then optional. Only an empty"
    " data dir asks; once it exists, its configuration is used.",
)
@click.option(
    "--initial-cluster-state",
    type=click.Choice(["new", "existing"]),
    default="new",
    show_default=True,
    help="existing: this node joins a running cluster and never seeds one of its own.",
)
@click.option(
    "--max-promotion-lag",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="As leader, promote a learner only within this many entries of the log's end.",
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
@click.option(
    "--snapshot-encoder",
    type=click.Choice(["fork", "thread"]),
    default="fork",
    show_default=True,
    help="Encode snapshots in a forked child (the event loop keeps the GIL) or a thread.",
)
@click.option(
    "--tick-ms",
    type=click.FloatRange(min=1),
    default=DEFAULT_TICK_INTERVAL_S * 1000,
    show_default=True,
)
@click.option(
    "--election-ticks",
    type=click.IntRange(min=2),
    default=DEFAULT_ELECTION_TIMEOUT_TICKS,
    show_default=True,
    help="Election timeout in ticks (randomized up to twice this).",
)
@click.option(
    "--heartbeat-ticks",
    type=click.IntRange(min=1),
    default=DEFAULT_HEARTBEAT_INTERVAL_TICKS,
    show_default=True,
)
@click.option("--max-value-bytes", type=click.IntRange(min=1), default=None, help="Default 1 MiB.")
@click.option(
    "--max-frame-bytes", type=click.IntRange(min=1024), default=None, help="Default 16 MiB."
)
@click.option(
    "--max-inflight-proposals",
    type=click.IntRange(min=1),
    default=None,
    help="A leader's entries submitted and not yet applied; over it: Busy. Default 4096.",
)
@click.option(
    "--max-inflight-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="The same budget in command bytes. Default 64 MiB.",
)
@click.option(
    "--history-revisions",
    type=click.IntRange(min=1),
    default=None,
    help="Watch history: the most recent revisions kept (older watches get Compacted)."
    " Default 10000.",
)
@click.option(
    "--history-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Watch history: the most bytes of events kept (keys, values, previous values)."
    " Default 64 MiB.",
)
@click.option(
    "--peer-secret-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The cluster's shared secret (the file's contents, stripped, at least 16 bytes): "
    "peers prove they hold it before their Raft messages count.",
)
@click.option(
    "--insecure-peers",
    is_flag=True,
    help="Run without a peer secret, believing any connection that claims to be a peer "
    "(only where every process that can connect is trusted).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="Connections held at once; more are closed at once.",
)
@click.option(
    "--idle-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_IDLE_TIMEOUT_S,
    show_default=True,
    help="Close a connection that completes no frame for this long.",
)
@click.option(
    "--frame-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_FRAME_TIMEOUT_S,
    show_default=True,
    help="Close a connection whose frame is not complete this long after its first byte.",
)
@click.option(
    "--cert-file",
    type=_FILE,
    default=None,
    help="TLS: this node's certificate (PEM); the port then speaks only TLS, to clients and peers.",
)
@click.option("--key-file", type=_FILE, default=None, help="TLS: the certificate's key (PEM).")
@click.option(
    "--trusted-ca-file",
    type=_FILE,
    default=None,
    help="TLS: the CA that signs client certificates (with --client-cert-auth).",
)
@click.option(
    "--client-cert-auth",
    is_flag=True,
    help="TLS: clients must present a certificate signed by --trusted-ca-file.",
)
@click.option(
    "--peer-cert-file",
    type=_FILE,
    default=None,
    help="Peer mutual TLS: the certificate this node presents to its peers.",
)
@click.option("--peer-key-file", type=_FILE, default=None, help="Peer mutual TLS: its key.")
@click.option(
    "--peer-trusted-ca-file",
    type=_FILE,
    default=None,
    help="Peer mutual TLS: the CA that signs every node's certificates; a certificate it "
    "issued proves a member, so --peer-secret-file becomes optional.",
)
@click.option(
    "--auth-token-file",
    type=_FILE,
    default=None,
    help="Client tokens, one 'TOKEN ROLE' per line (roles: read, readwrite, admin); "
    "clients must then present one.",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    default=None,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics and a health check at"
    " /health (off by default).",
)
def server(
    node_id: int,
    listen: str,
    peers: str | None,
    join: str | None,
    initial_cluster_state: str,
    max_promotion_lag: int,
    data_dir: Path,
    cluster_id: str,
    test_hooks: bool,
    snapshot_threshold: int | None,
    snapshot_encoder: str,
    tick_ms: float,
    election_ticks: int,
    heartbeat_ticks: int,
    max_value_bytes: int | None,
    max_frame_bytes: int | None,
    max_inflight_proposals: int | None,
    max_inflight_bytes: int | None,
    history_revisions: int | None,
    history_bytes: int | None,
    peer_secret_file: Path | None,
    insecure_peers: bool,
    max_connections: int,
    idle_timeout_s: float,
    frame_timeout_s: float,
    cert_file: Path | None,
    key_file: Path | None,
    trusted_ca_file: Path | None,
    client_cert_auth: bool,
    peer_cert_file: Path | None,
    peer_key_file: Path | None,
    peer_trusted_ca_file: Path | None,
    auth_token_file: Path | None,
    metrics_listen: str | None,
) -> None:
    """Run one server node in the foreground.

    Ctrl-C or SIGTERM stops it cleanly; SIGKILL loses nothing acknowledged.
    Example:

    \b
      kvraft server --id 0 --listen 127.0.0.1:7001 \\
        --peers 0=127.0.0.1:7001,1=127.0.0.1:7002,2=127.0.0.1:7003 \\
        --data-dir ./data/n0 --peer-secret-file ./data/peer-secret

    Without --peer-secret-file (or the --peer-* TLS flags) the server refuses
    to start, unless --insecure-peers is given (then it warns). See
    docs/security.md for TLS and tokens.
    """
    from kvraft.kv_protocol import DEFAULT_MAX_VALUE_BYTES
    from kvraft.rpc.framing import DEFAULT_MAX_FRAME_BYTES
    from kvraft.rpc.tls import TlsFiles
    from kvraft.server.metrics_http import MetricsListenError
    from kvraft.server.options import (
        DEFAULT_HISTORY_BYTES,
        DEFAULT_HISTORY_REVISIONS,
        DEFAULT_MAX_INFLIGHT_BYTES,
        DEFAULT_MAX_INFLIGHT_PROPOSALS,
        DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
        ServerOptions,
        parse_peers,
    )
    from kvraft.server.process import run_server

    secret = _read_secret(peer_secret_file) if peer_secret_file is not None else None
    tokens = _read_tokens(auth_token_file) if auth_token_file is not None else None
    tls = TlsFiles(
        cert_file=cert_file,
        key_file=key_file,
        trusted_ca_file=trusted_ca_file,
        client_cert_auth=client_cert_auth,
        peer_cert_file=peer_cert_file,
        peer_key_file=peer_key_file,
        peer_trusted_ca_file=peer_trusted_ca_file,
    )
    try:
        threshold: int | None = (
            DEFAULT_SNAPSHOT_THRESHOLD_BYTES if snapshot_threshold is None else snapshot_threshold
        )
        from kvraft.storage.schema import DB_FILENAME

        reach = parse_peers(peers) if peers is not None else {}
        if join is not None and (data_dir / DB_FILENAME).exists():
            # Joined before: the data dir knows the configuration, so a restart
            # must not depend on the members it once asked being up.
            log.info("n%d: data dir %s exists: --join not consulted", node_id, data_dir)
        elif join is not None:
            reach = _members_of(node_id, join, cluster_id) | reach
        elif peers is None:
            raise click.UsageError("--peers is required (or --join to join a running cluster)")
        options = ServerOptions(
            node_id=node_id,
            listen=listen,
            peers=reach,
            join_existing=join is not None or initial_cluster_state == "existing",
            max_promotion_lag_entries=max_promotion_lag,
            data_dir=data_dir,
            cluster_id=cluster_id,
            test_hooks=test_hooks,
            snapshot_threshold_bytes=threshold or None,
            snapshot_encoder=snapshot_encoder,
            tick_interval_s=tick_ms / 1000,
            election_timeout_ticks=election_ticks,
            heartbeat_interval_ticks=heartbeat_ticks,
            max_value_bytes=max_value_bytes or DEFAULT_MAX_VALUE_BYTES,
            max_frame_bytes=max_frame_bytes or DEFAULT_MAX_FRAME_BYTES,
            max_inflight_proposals=max_inflight_proposals or DEFAULT_MAX_INFLIGHT_PROPOSALS,
            max_inflight_bytes=max_inflight_bytes or DEFAULT_MAX_INFLIGHT_BYTES,
            history_revisions=history_revisions or DEFAULT_HISTORY_REVISIONS,
            history_bytes=history_bytes or DEFAULT_HISTORY_BYTES,
            peer_secret=secret,
            insecure_peers=insecure_peers,
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
            frame_timeout_s=frame_timeout_s,
            tls=tls,
            tokens=tokens,
            metrics_listen=metrics_listen,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        run_server(options)
    except StorageError as exc:
        fail(str(exc), EXIT_OP_ERROR)
    except OSError as exc:
        where = metrics_listen if isinstance(exc, MetricsListenError) else listen
        fail(f"n{node_id}: cannot listen on {where}: {describe_os_error(exc)}", EXIT_OP_ERROR)


@click.command()
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
@click.option(
    "--metrics-base-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Node i serves /metrics and /health on METRICS_BASE_PORT + i (default BASE_PORT + 100).",
)
@click.option("--no-metrics", is_flag=True, help="Serve no metrics (no --metrics-listen).")
@click.pass_context
def cluster(
    ctx: click.Context,
    nodes: int,
    data_dir: Path,
    base_port: int,
    host: str,
    metrics_base_port: int | None,
    no_metrics: bool,
) -> None:
    """Run a local cluster of NODES servers in the foreground.

    Every node serves Prometheus metrics and a health check (/metrics,
    /health) on METRICS_BASE_PORT + i unless --no-metrics.
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
    metrics_base = (
        0 if no_metrics else cluster_metrics_base_port(base_port, nodes, metrics_base_port)
    )
    if data_dir.exists() and not data_dir.is_dir():
        raise click.BadParameter(f"{data_dir} is not a directory", param_hint="--data-dir")
    check_cluster_size(data_dir, nodes)
    secret_file = ensure_peer_secret(data_dir)
    addresses = {i: f"{host}:{base_port + i}" for i in range(nodes)}
    metrics = {} if no_metrics else {i: f"{host}:{metrics_base + i}" for i in range(nodes)}
    peers = ",".join(f"{i}={a}" for i, a in addresses.items())
    log_level = _log_level(ctx)
    supervisor = NodeProcesses()
    # Handlers first, so a Ctrl-C while nodes start still stops the ones started.
    signal.signal(signal.SIGINT, supervisor.stop)
    signal.signal(signal.SIGTERM, supervisor.stop)
    for i, address in addresses.items():
        cmd = [sys.executable, "-m", "kvraft", "--log-level", log_level, "server"]
        cmd += ["--id", str(i), "--listen", address, "--peers", peers]
        cmd += ["--data-dir", str(data_dir / f"n{i}"), "--peer-secret-file", str(secret_file)]
        if i in metrics:
            cmd += ["--metrics-listen", metrics[i]]
        if not supervisor.start(cmd):
            break
    print_banner(data_dir, addresses, supervisor.procs, metrics)
    sys.exit(EXIT_OK if supervisor.watch() else EXIT_OP_ERROR)
