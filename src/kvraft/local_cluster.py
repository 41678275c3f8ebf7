"""``kvraft cluster``: a local cluster of server processes, started, watched and stopped together.

The command itself (flags, signal handlers) is in :mod:`kvraft.cli_servers`;
this is what it runs: the size check that keeps a data dir's membership fixed,
the supervisor of the node processes, and the banner that tells the user how
to reach them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from kvraft.errors import one_line

DEFAULT_BASE_PORT = 7001
# Node i serves its metrics on METRICS_BASE_PORT + i, by default BASE_PORT + 100.
METRICS_PORT_OFFSET = 100
# How long `kvraft cluster` waits for its nodes to stop cleanly before SIGKILL.
CLUSTER_STOP_GRACE_S = 10.0


def default_servers(nodes: int = 3, base_port: int = DEFAULT_BASE_PORT) -> list[str]:
    """The addresses of ``kvraft cluster --nodes N --base-port P``."""
    return [f"127.0.0.1:{base_port + i}" for i in range(nodes)]


def describe_os_error(exc: OSError) -> str:
    """A short reason for a failed bind or connect, with a hint for the common cases."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another node or program has this port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "not an address of this host"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return one_line(exc.strerror or str(exc))


def cluster_metrics_base_port(base_port: int, nodes: int, metrics_base: int | None) -> int:
    """The first metrics port of ``kvraft cluster`` (``base_port + 100`` unless given).

    A usage error if the metrics ports ``metrics_base .. + nodes - 1`` go past
    65535 or overlap the nodes' own ports: a node would fail to start.
    """
    first = base_port + METRICS_PORT_OFFSET if metrics_base is None else metrics_base
    last = first + nodes - 1
    if last > 65535:
        raise click.BadParameter(
            f"metrics ports {first}..{last} go past 65535", param_hint="--metrics-base-port"
        )
    if first <= base_port + nodes - 1 and base_port <= last:
        raise click.BadParameter(
            f"metrics ports {first}..{last} overlap the nodes' ports"
            f" {base_port}..{base_port + nodes - 1}",
            param_hint="--metrics-base-port",
        )
    return first


def print_banner(
    data_dir: Path,
    addresses: dict[int, str],
    procs: Sequence[subprocess.Popen[bytes]],
    metrics: dict[int, str] | None = None,
) -> None:
    """The nodes' addresses (and their metrics' URLs) and how to use them."""
    click.echo(f"kvraft: {len(addresses)}-node cluster, data under {data_dir}{os.sep}")
    for i, address in addresses.items():
        click.echo(f"  n{i}  {address}  pid {procs[i].pid}" if i < len(procs) else f"  n{i}")
        if metrics is not None and i in metrics:
            click.echo(f"      metrics: http://{metrics[i]}/metrics")
    click.echo("Use it from another terminal:")
    servers = ",".join(addresses.values())
    if servers != ",".join(default_servers()):
        click.echo(f"  export KVRAFT_SERVERS={servers}")
    k = command_name()
    click.echo(f"  {k} put greeting hello && {k} get greeting && {k} status")
    click.echo("Ctrl-C stops all nodes; running this again resumes the same data.")
    sys.stdout.flush()


class NodeProcesses:
    """The server processes of ``kvraft cluster``: started, watched, stopped together.

    Any node exiting with an error stops the others. A stop (Ctrl-C, SIGTERM)
    sends SIGTERM to each node, which shuts down cleanly; one still running
    after CLUSTER_STOP_GRACE_S is killed. Either makes the run unclean.
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.clean = True  # no node failed or had to be killed

    def start(self, cmd: list[str]) -> bool:
        """Start one node, unless a stop came first; whether it was started."""
        if self.stopping:
            return False
        self.procs.append(subprocess.Popen(cmd))
        return True

    def stop(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        """Ask every running node to stop (a signal handler)."""
        self.stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def watch(self) -> bool:
        """Wait until every node has exited; whether all of them stopped cleanly."""
        stop_deadline: float | None = None
        while any(p.poll() is None for p in self.procs):
            for i, proc in enumerate(self.procs):
                rc = proc.poll()
                if rc is not None and rc != 0 and not self.stopping:
                    click.echo(
                        f"kvraft: node n{i} exited with status {rc}; stopping the others", err=True
                    )
                    self.clean = False
                    self.stop()
            if self.stopping:
                stop_deadline = stop_deadline or time.monotonic() + CLUSTER_STOP_GRACE_S
                if time.monotonic() > stop_deadline:
                    self._kill_stragglers()
            time.sleep(0.1)
        if self.stopping and self.clean:
            click.echo("kvraft: all nodes stopped", err=True)
        elif not self.stopping:
            # every node exited 0 on its own (someone signalled them directly)
            click.echo("kvraft: all nodes exited", err=True)
        return self.clean

    def _kill_stragglers(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                click.echo(f"kvraft: n{i} did not stop in time; killing it", err=True)
                proc.kill()
                self.clean = False


def command_name() -> str:
    """How the user can run this command again: ``kvraft`` if it is on PATH, else its path."""
    if shutil.which("kvraft"):
        return "kvraft"
    argv0 = Path(sys.argv[0])
    if argv0.name == "kvraft":
        return str(argv0)
    return f"{sys.executable} -m kvraft"


CLUSTER_META = "cluster.json"


def check_cluster_size(data_dir: Path, nodes: int) -> None:
    """Refuse to run DATA_DIR's cluster with another number of nodes; record it if new.

    Raft's safety assumes every node agrees on the membership: rerunning a
    3-node data dir as 5 nodes would let two empty nodes and one stale node
    elect a leader that lacks committed entries. So the size is kept in
    ``DATA_DIR/cluster.json`` (or inferred from the nI dirs of an older run).
    """
    meta = data_dir / CLUSTER_META
    recorded: int | None = None
    if meta.exists():
        try:
            recorded = int(json.loads(meta.read_text())["nodes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise click.BadParameter(
                f"{meta} is unreadable ({type(exc).__name__}); fix or remove it",
                param_hint="--data-dir",
            ) from None
    elif data_dir.is_dir():
        ids = [int(p.name[1:]) for p in data_dir.glob("n*") if p.name[1:].isdigit() and p.is_dir()]
        recorded = max(ids) + 1 if ids else None
    if recorded is not None and recorded != nodes:
        raise click.BadParameter(
            f"{data_dir} holds a {recorded}-node cluster; run it with --nodes {recorded} "
            "or use another --data-dir",
            param_hint="--nodes",
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            meta.write_text(json.dumps({"nodes": nodes}) + "\n")
    except OSError as exc:
        raise click.BadParameter(
            f"cannot use {data_dir}: {describe_os_error(exc)}", param_hint="--data-dir"
        ) from None


PEER_SECRET_FILE = "peer-secret"


def ensure_peer_secret(data_dir: Path) -> Path:
    """``DATA_DIR/peer-secret``, created with a fresh random secret (mode 0600) if missing.

    So that ``kvraft cluster`` is secured by default: its nodes prove this
    secret to each other, and a rerun on the same dir keeps it. Created with
    O_EXCL and the mode at once, so the secret is never readable by others,
    not even for an instant. A usage error if the file cannot be written.
    """
    from kvraft.rpc.peer_auth import new_secret

    path = data_dir / PEER_SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    except OSError as exc:
        raise click.BadParameter(
            f"cannot create {path}: {describe_os_error(exc)}", param_hint="--data-dir"
        ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(new_secret() + b"\n")
    return path
