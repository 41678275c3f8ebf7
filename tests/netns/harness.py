"""A kvraft cluster whose nodes are hosts of their own: one network namespace each.

``NetnsCluster(3, base_dir=tmp_path)`` makes a :class:`NamespaceNetwork`, a
host ``n<i>`` per node (address ``10.88.0.(11+i)``), a host ``client``, and
starts every server inside its host's namespace with the product's command
line, every node on the same port of its own address, no proxy in between::

    ip netns exec RUN-nI python -m kvraft server --id I --listen 10.88.0.1I:7001
        --peers 0=10.88.0.11:7001,1=10.88.0.12:7001,... --data-dir BASE/nI
        --cluster-id NAME --peer-secret-file BASE/peer-secret [server_args...]

The test process reaches the cluster only from inside namespaces: through the
``client`` host (:attr:`client_loop`, :meth:`statuses`, :meth:`cli`), or from
inside a node's own namespace (:meth:`status_from_inside`), which still works
while that node's cable is pulled. Servers are spawned through
``kvraft.testing.processes``, so none outlives the test process.

Growing the cluster is one call: ``add_node(3, server_args=[...])`` makes host
``n3`` and starts node 3 there with the flags given (for a node that joins a
running cluster, the membership flags), and the node's address joins
:attr:`addresses`. Logs are ``BASE/nI.log``, appended across restarts with a
harness line per start and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kvraft.client.admin import fetch_statuses_async
from kvraft.local_cluster import ensure_peer_secret
from kvraft.testing import processes
from kvraft.testing.waiting import wait_until

from .network import Host, NamespaceLoop, NamespaceNetwork

log = logging.getLogger(__name__)

PORT = 7001
READY_TIMEOUT_S = 30.0
STATUS_TIMEOUT_S = 0.5
CLI_TIMEOUT_S = 60.0


def _log_event(path: Path, i: int, what: str) -> None:
    stamp = datetime.datetime.now().isoformat(timespec="milliseconds")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"===== tests.netns {stamp} n{i} {what}\n")


async def _port_open(address: str, timeout_s: float) -> bool:
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


class NetnsCluster:
    """Server processes in namespaces of their own, and the switches of a test.

    Methods are meant for the test's thread; process methods return when the
    change has happened (a stopped server is reaped, a started one listens).
    """

    def __init__(
        self,
        n: int,
        *,
        base_dir: Path,
        server_args: Sequence[str] = (),
        cluster_id: str | None = None,
        port: int = PORT,
        command: Callable[[NetnsCluster, int], Sequence[str]] | None = None,
        start: bool = True,
    ) -> None:
        self.base_dir = base_dir
        self.command = command
        self.port = port
        self.server_args = tuple(server_args)
        self.cluster_id = cluster_id or f"netns-{uuid.uuid4().hex[:12]}"
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.peer_secret_file = ensure_peer_secret(self.base_dir)
        self.hosts: dict[int, Host] = {}
        self._extra_args: dict[int, tuple[str, ...]] = {}
        self._peers: dict[int, dict[int, str]] = {}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._inside: dict[int, NamespaceLoop] = {}
        self._client_loops: list[NamespaceLoop] = []
        self._lock = threading.RLock()
        self.network = NamespaceNetwork()
        self.client_loop: NamespaceLoop | None = None
        try:
            self.client = self.network.add_host("client")
            self.client_loop = NamespaceLoop(self.client.netns)
            for i in range(n):
                self.add_node(i, start=False)
            initial = {i: self.address(i) for i in range(n)}
            for i in range(n):
                self._peers[i] = dict(initial)
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- layout

    @property
    def ids(self) -> list[int]:
        return sorted(self.hosts)

    @property
    def addresses(self) -> list[str]:
        """Every node's client address, in id order (what a client is given)."""
        return [self.address(i) for i in self.ids]

    def address(self, i: int) -> str:
        return self._host(i).endpoint(self.port)

    def data_dir(self, i: int) -> Path:
        return self.base_dir / f"n{i}"

    def log_path(self, i: int) -> Path:
        return self.base_dir / f"n{i}.log"

    def _host(self, i: int) -> Host:
        try:
            return self.hosts[i]
        except KeyError:
            raise ValueError(f"no node {i} in {self.network.run_id}") from None

    def server_command(self, i: int) -> list[str]:
        """The command line that starts node ``i`` inside its namespace.

        ``command(cluster, i)``, if given, replaces everything after
        ``ip netns exec NETNS`` (a deployment's own command line, say).
        """
        host = self._host(i)
        if self.command is not None:
            return ["ip", "netns", "exec", host.netns, *self.command(self, i)]
        peers = self._peers.get(i) or {i: self.address(i)}
        argv = ["ip", "netns", "exec", host.netns, sys.executable, "-m", "kvraft"]
        argv += ["server", "--id", str(i), "--listen", self.address(i)]
        argv += ["--peers", ",".join(f"{j}={a}" for j, a in sorted(peers.items()))]
        argv += ["--data-dir", str(self.data_dir(i)), "--cluster-id", self.cluster_id]
        argv += ["--peer-secret-file", str(self.peer_secret_file)]
        argv += [*self.server_args, *self._extra_args.get(i, ())]
        return argv

    # ------------------------------------------------------------ membership

    def add_node(
        self,
        i: int,
        *,
        server_args: Sequence[str] = (),
        peers: Mapping[int, str] | None = None,
        start: bool = True,
    ) -> Host:
        """Make host ``n<i>`` and (by default) start node ``i`` in it; its host.

        ``peers`` is the node's ``--peers`` (default: the members so far and
        itself); ``server_args`` are added to its command line (a joining
        node's membership flags). The cluster's own configuration is the
        caller's business: this makes the host and runs the process.
        """
        with self._lock:
            if i in self.hosts:
                raise ValueError(f"node {i} exists")
            host = self.network.add_host(f"n{i}")
            self.hosts[i] = host
            self.data_dir(i).mkdir(parents=True, exist_ok=True)
            self._extra_args[i] = tuple(server_args)
            if peers is not None:
                self._peers[i] = dict(peers)
            elif self._peers:
                self._peers[i] = {**{j: self.address(j) for j in self._peers}, i: self.address(i)}
            if start:
                self._spawn(i)
                self.wait_ready([i])
            return host

    # -------------------------------------------------------------- processes

    def start(self, ids: Sequence[int] | None = None) -> None:
        """Start every node (or ``ids``) that is not running, and wait until they listen."""
        with self._lock:
            todo = [i for i in (self.ids if ids is None else ids) if not self.is_alive(i)]
            for i in todo:
                self._spawn(i)
            self.wait_ready(todo)

    def _spawn(self, i: int) -> None:
        if self.network.closed:
            raise RuntimeError("cluster is closed")
        argv = self.server_command(i)
        _log_event(self.log_path(i), i, f"start: {shlex.join(argv)}")
        self._procs[i] = processes.spawn(argv, self.log_path(i))
        log.info("%s: n%d started in %s, pid %d", self.network.run_id, i, self._host(i).netns,
                 self._procs[i].pid)  # fmt: skip

    def wait_ready(self, ids: Sequence[int], timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until each node accepts connections, asked from inside its own namespace."""
        for i in ids:
            proc = self._procs[i]

            def listening_or_gone(i: int = i, proc: subprocess.Popen[bytes] = proc) -> bool:
                return proc.poll() is not None or self.inside(i).run(
                    _port_open(self.address(i), 0.2)
                )

            wait_until(
                listening_or_gone,
                timeout_s,
                interval_s=0.02,
                message=f"n{i} listening on {self.address(i)}",
            )
            if proc.poll() is not None:
                raise RuntimeError(
                    f"n{i} exited with status {proc.returncode} before listening; "
                    f"last lines of {self.log_path(i)}:\n{self.log_tail(i, 30)}"
                )

    def is_alive(self, i: int) -> bool:
        proc = self._procs.get(i)
        return proc is not None and proc.poll() is None

    def pid(self, i: int) -> int | None:
        proc = self._procs.get(i)
        return proc.pid if proc is not None and proc.poll() is None else None

    def terminate(
        self, i: int, timeout_s: float = 30.0, sig: signal.Signals = signal.SIGTERM
    ) -> int | None:
        """Stop node ``i`` with ``sig`` (SIGTERM: a leader hands over first); its exit status.

        SIGKILL if it outlives ``timeout_s`` (the status then says so). None if
        it was not running.
        """
        with self._lock:
            proc = self._procs.get(i)
            if proc is None or proc.returncode is not None:
                return None
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                status = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                status = processes.kill(proc)
            _log_event(
                self.log_path(i), i, f"pid {proc.pid} stopped by {sig.name}, status {status}"
            )
            return status

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` and reap it."""
        with self._lock:
            proc = self._procs.get(i)
            if proc is not None and proc.returncode is None:
                processes.kill(proc)
                _log_event(self.log_path(i), i, f"pid {proc.pid} killed with SIGKILL")

    def restart(self, i: int) -> None:
        """Start node ``i`` again on its data dir (killing it first if it runs)."""
        with self._lock:
            self.kill(i)
            self._spawn(i)
            self.wait_ready([i])

    # ----------------------------------------------------------------- faults

    def link_down(self, i: int) -> None:
        """Pull node ``i``'s cable: it runs on, and nothing reaches it or leaves it."""
        self.network.link_down(self._host(i).name)
        _log_event(self.log_path(i), i, "link down")

    def link_up(self, i: int) -> None:
        self.network.link_up(self._host(i).name)
        _log_event(self.log_path(i), i, "link up")

    def partition(self, *groups: Sequence[int | str]) -> None:
        """Split the hosts: ``partition([0, "client"], [1, 2, "clientb"])``; ints are node ids.

        Hosts in no group stay with the first (see NamespaceNetwork.partition).
        """
        self.network.partition(
            *([f"n{h}" if isinstance(h, int) else h for h in group] for group in groups)
        )

    def heal(self) -> None:
        self.network.heal()

    def add_client(self, name: str) -> NamespaceLoop:
        """Another client host ``name``, and an event loop inside it (closed with the cluster)."""
        with self._lock:
            host = self.network.add_host(name)
            loop = NamespaceLoop(host.netns)
            self._client_loops.append(loop)
            return loop

    # ----------------------------------------------------------------- probes

    def inside(self, i: int) -> NamespaceLoop:
        """An event loop inside node ``i``'s namespace (made on first use)."""
        with self._lock:
            if i not in self._inside:
                self._inside[i] = NamespaceLoop(self._host(i).netns)
            return self._inside[i]

    def statuses(self, via: NamespaceLoop | None = None) -> list[dict[str, Any]]:
        """Every node's status row, asked from the client host or ``via``'s (unreachable
        rows say so)."""
        loop = via or self.client_loop
        assert loop is not None
        return loop.run(fetch_statuses_async(self.addresses, STATUS_TIMEOUT_S), 10.0)

    def status_from_inside(self, i: int) -> dict[str, Any]:
        """Node ``i``'s own status row, asked from inside its namespace (cable or not)."""
        rows = self.inside(i).run(fetch_statuses_async([self.address(i)], STATUS_TIMEOUT_S), 10.0)
        return rows[0]

    def leader(
        self, among: Sequence[int] | None = None, via: NamespaceLoop | None = None
    ) -> tuple[int, int] | None:
        """(id, term) of the highest-term leader the client host (or ``via``) reaches, or None."""
        rows = [r for r in self.statuses(via) if r.get("reachable") and r.get("role") == "leader"]
        rows = [r for r in rows if among is None or int(r["id"]) in among]
        if not rows:
            return None
        best = max(rows, key=lambda r: int(r["term"]))
        return int(best["id"]), int(best["term"])

    def find_leader(self, timeout_s: float = 30.0, among: Sequence[int] | None = None) -> int:
        found = wait_until(lambda: self.leader(among), timeout_s, message="a leader")
        assert found is not None
        return found[0]

    def applied(self, i: int) -> int:
        """Node ``i``'s applied index, asked from the client host (-1: unreachable)."""
        row = self.statuses()[self.ids.index(i)]
        return int(row["applied_index"]) if row.get("reachable") else -1

    def cli(self, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run ``kvraft ARGS...`` on the client host, ``$KVRAFT_SERVERS`` set to the cluster."""
        env = {**os.environ, "KVRAFT_SERVERS": ",".join(self.addresses)}
        argv = ["ip", "netns", "exec", self.client.netns, sys.executable, "-m", "kvraft", *args]
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
        )

    # ------------------------------------------------------------------- logs

    def log_tail(self, i: int, lines: int = 60) -> str:
        try:
            text = self.log_path(i).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_sections(self, lines: int = 60) -> list[tuple[str, str]]:
        return [
            (f"kvraft {self.network.run_id} n{i} log: last {lines} lines", tail)
            for i in self.ids
            if (tail := self.log_tail(i, lines))
        ]

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Kill every server, stop the loops, delete the namespaces; idempotent."""
        with self._lock:
            for i, proc in list(self._procs.items()):
                try:
                    if proc.poll() is None:
                        _log_event(self.log_path(i), i, f"pid {proc.pid} killed at close")
                    processes.kill(proc)
                except Exception:  # release the rest whatever happens to one
                    log.exception("cannot kill n%d (pid %d)", i, proc.pid)
            for loop in [*self._inside.values(), *self._client_loops, self.client_loop]:
                if loop is not None:
                    loop.stop()
            self._inside.clear()
            self.network.close()

    def __enter__(self) -> NetnsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
