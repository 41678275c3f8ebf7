"""A cluster of real server processes, each behind a fault-injecting proxy.

``Cluster(3, base_dir=tmp_path)`` starts three servers as OS processes. Server
``i`` listens on a *private* port that only its proxy uses; its proxy listens
on the *public* port that clients (:attr:`Cluster.addresses`) and the other
servers (``--peers``) are given, so every message to server ``i`` crosses
proxy ``i`` and the network can be broken per message (see ``links.py``). The
command line is the product's::

    python -m kvraft [--log-level L] server --id I --listen HOST:PRIVATE
        --peers 0=HOST:PUBLIC0,1=HOST:PUBLIC1,... --data-dir BASE/nI
        --cluster-id NAME --peer-secret-file BASE/peer-secret [--test-hooks]
        [server_args...]

``command`` replaces ``python -m kvraft`` (a test's stand-in server, say).

Membership changes: ``Cluster(5, members=[0, 1, 2])`` bootstraps a cluster of
n0..n2 only; n3 and n4 are spares, with their proxies, ports and data dirs
ready but not started, until :meth:`join` starts one with
``--initial-cluster-state existing`` (or ``--join``) after a ``kvraft member
add``. A bootstrap member's first start names only the bootstrap members in
``--peers`` (they are the seed its data dir records); every later start, and
every spare, is given every node's address: ``--peers`` then only says how
this node reaches each id, never who the members are (the data dir and the
log decide). :meth:`wipe` empties a stopped node's data dir (a dead disk).
Peers authenticate as in production: each cluster gets a random secret of
its own in ``BASE/peer-secret`` (``insecure_peers=True`` passes
``--insecure-peers`` instead).

Data dirs (``base_dir/nI``), ports and logs (``base_dir/nI.log``, appended
across restarts, with a header line per start and kill) stay the same for the
life of the cluster, so ``restart(i)`` is a crash-recovery of the same node.
``pause(i)``/``resume(i)`` stop and continue a server with SIGSTOP/SIGCONT:
a process that is alive, holds its connections and its role, but runs no
code (what a long GC pause, a swapped-out VM or a stalled disk does to a
leader, and what breaks lease-based reads).
:meth:`close` kills everything; so does garbage collection, interpreter exit,
and (through ``processes.py``) the death of the test process itself.
"""

from __future__ import annotations

import datetime
import logging
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from kvraft.local_cluster import ensure_peer_secret
from kvraft.testing import processes
from kvraft.testing.faults import NetworkControl, NetworkProfile, TrafficStats, network_profile
from kvraft.testing.proxy_network import ProxyNetwork

log = logging.getLogger(__name__)

DEFAULT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "kvraft")
DEFAULT_READY_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 60

ServerArgs = Sequence[str] | Callable[[int], Sequence[str]]


class ServerStartError(RuntimeError):
    """A server died before it was ready, or was not ready in time; says why, with its log."""


# Called with every new Cluster; the test suite's pytest plugin
# (tests/support/cluster_fixtures.py) uses it to find the logs of the clusters
# a test made, whichever way it made them.
_listeners: list[Callable[[Cluster], None]] = []
_listeners_lock = threading.Lock()


def on_cluster_created(listener: Callable[[Cluster], None]) -> Callable[[], None]:
    """Call ``listener(cluster)`` for each cluster created from now on; returns the remover."""
    with _listeners_lock:
        _listeners.append(listener)

    def remove() -> None:
        with _listeners_lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove


class _Resources:
    """What must be released even if a Cluster is never closed (no reference back to it)."""

    def __init__(self, network: ProxyNetwork) -> None:
        self.network = network
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.log_paths: dict[int, Path] = {}
        self.ports: list[int] = []

    def release(self) -> None:
        for i, proc in list(self.procs.items()):
            try:
                if proc.poll() is None:
                    processes.kill(proc)
                    _log_event(self.log_paths[i], i, f"pid {proc.pid} killed at cluster close")
                else:
                    processes.kill(proc)  # reaps it if nobody has yet
            except Exception:  # keep releasing the rest; a reaper must not stop halfway
                log.exception("cannot kill server pid %d", proc.pid)
        self.network.close()
        processes.release_ports(self.ports)


def _log_event(path: Path, i: int, what: str) -> None:
    """A harness line in a server's log, so the log tells the whole story of the node."""
    stamp = datetime.datetime.now().isoformat(timespec="milliseconds")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"===== kvraft.testing {stamp} n{i} {what}\n")


class Cluster:
    """n server processes behind proxies; the fault and process switches of a test.

    Server ids are 0..n-1. Every method is thread-safe. Process methods
    (``kill``, ``restart``, ...) return when the change has happened: a killed
    server is reaped, a restarted one accepts connections.
    """

    def __init__(
        self,
        n: int,
        *,
        base_dir: Path | str,
        network: str | NetworkProfile = "reliable",
        server_args: ServerArgs = (),
        command: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        cluster_id: str | None = None,
        test_hooks: bool = True,
        log_level: str | None = None,
        seed: int | None = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        start: bool = True,
        insecure_peers: bool = False,
        members: Iterable[int] | None = None,
    ) -> None:
        if n < 1:
            raise ValueError(f"a cluster needs at least one server, not {n}")
        self.n = n
        #: The ids that bootstrap the cluster (all by default); the others are spares.
        self.members: tuple[int, ...] = tuple(sorted(range(n) if members is None else members))
        if not self.members or not set(self.members) <= set(range(n)):
            raise ValueError(f"members {self.members} must be some of 0..{n - 1}")
        # Spares started by join(), and how: the --join addresses (None: --initial-cluster-state
        # existing with every node's address in --peers).
        self._joined: dict[int, tuple[str, ...] | None] = {}
        self.base_dir = Path(base_dir)
        self.host = host
        self.command: tuple[str, ...] = tuple(command) if command is not None else DEFAULT_COMMAND
        self.server_args = server_args
        self.cluster_id = cluster_id or f"test-{uuid.uuid4().hex[:12]}"
        self.test_hooks = test_hooks
        self.log_level = log_level
        self.ready_timeout_s = ready_timeout_s
        self.env = env
        self.name = self.base_dir.name
        self._lock = threading.RLock()
        self._starts = [0] * n
        self._paused: set[int] = set()
        #: (server id, pid, start time) of every process ever started, for
        #: checks that none outlives the cluster.
        self.spawned: list[tuple[int, int, int | None]] = []

        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.insecure_peers = insecure_peers
        #: The cluster's peer secret (None with insecure_peers).
        self.peer_secret_file: Path | None = (
            None if insecure_peers else ensure_peer_secret(self.base_dir)
        )
        self.network = ProxyNetwork(network_profile(network), seed=seed, host=host)
        self._res = _Resources(self.network)
        self._finalizer = weakref.finalize(self, self._res.release)
        try:
            self.private_ports = [processes.reserve_port(host) for _ in range(n)]
            self._res.ports.extend(self.private_ports)
            self.addresses: list[str] = [
                self.network.add(i, f"{host}:{port}") for i, port in enumerate(self.private_ports)
            ]
            for i in range(n):
                self.data_dir(i).mkdir(parents=True, exist_ok=True)
                self._res.log_paths[i] = self.log_path(i)
            with _listeners_lock:
                listeners = list(_listeners)
            for listener in listeners:
                listener(self)
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- layout

    @property
    def control(self) -> NetworkControl:
        """The shared fault state of this cluster's proxies."""
        return self.network.control

    @property
    def private_addresses(self) -> list[str]:
        """Where the servers themselves listen (bypassing the proxies)."""
        return [f"{self.host}:{port}" for port in self.private_ports]

    def address(self, i: int) -> str:
        """The public (proxied) address of server ``i``."""
        return self.addresses[self._check(i)]

    def data_dir(self, i: int) -> Path:
        return self.base_dir / f"n{self._check(i)}"

    def log_path(self, i: int) -> Path:
        return self.base_dir / f"n{self._check(i)}.log"

    def server_command(self, i: int) -> list[str]:
        """The command line that starts server ``i`` (see the module docstring for ``--peers``)."""
        self._check(i)
        bootstrap = i in self.members and not (self.data_dir(i) / "raft.db").exists()
        reach = self.members if bootstrap else range(self.n)
        peers = ",".join(f"{j}={self.addresses[j]}" for j in reach)
        argv = list(self.command)
        if self.log_level is not None:
            argv += ["--log-level", self.log_level]
        argv += ["server", "--id", str(i), "--listen", self.private_addresses[i]]
        argv += ["--peers", peers, "--data-dir", str(self.data_dir(i))]
        if i in self._joined:
            join = self._joined[i]
            if join is None:
                argv += ["--initial-cluster-state", "existing"]
            else:
                argv += ["--join", ",".join(join)]
        argv += ["--cluster-id", self.cluster_id]
        if self.peer_secret_file is not None:
            argv += ["--peer-secret-file", str(self.peer_secret_file)]
        else:
            argv.append("--insecure-peers")
        if self.test_hooks:
            argv.append("--test-hooks")
        extra = self.server_args(i) if callable(self.server_args) else self.server_args
        argv += list(extra)
        return argv

    def _check(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise ValueError(f"no server {i} in a cluster of {self.n}")
        return i

    # -------------------------------------------------------------- processes

    @property
    def started_ids(self) -> list[int]:
        """The bootstrap members and the spares :meth:`join` started (running or not)."""
        return sorted(set(self.members) | self._joined.keys())

    def start(self) -> None:
        """Start every member (not the spares) that is not running; wait until all are ready."""
        with self._lock:
            ids = self.started_ids
            for i in ids:
                if not self.is_alive(i):
                    self._spawn(i)
            self.wait_ready(ids)

    def join(self, i: int, *, via: Iterable[int] | None = None, wait: bool = True) -> None:
        """Start spare ``i`` to join the running cluster (after ``kvraft member add``).

        ``via``: the ids whose addresses it is given with ``--join`` (it asks
        them who the members are); None: ``--initial-cluster-state existing``
        with every node's address in ``--peers``. Later restarts use the same.
        """
        with self._lock:
            self._check(i)
            self._joined[i] = (
                None if via is None else tuple(self.addresses[self._check(j)] for j in via)
            )
            self.kill(i)
            self._spawn(i)
            if wait:
                self.wait_ready([i])

    def wipe(self, i: int) -> None:
        """Empty the data dir of stopped server ``i``: its disk died (the log is kept)."""
        with self._lock:
            if self.is_alive(i):
                raise RuntimeError(f"n{i} is running: stop it before wiping its data dir")
            shutil.rmtree(self.data_dir(i))
            self.data_dir(i).mkdir()
            self._log_event(i, "data dir wiped")

    def _spawn(self, i: int) -> None:
        if self._finalizer.alive is False:
            raise RuntimeError("cluster is closed")
        argv = self.server_command(i)
        self._starts[i] += 1
        self._log_event(i, f"start #{self._starts[i]}: {shlex.join(argv)}")
        proc = processes.spawn(argv, self.log_path(i), env=self.env)
        self._res.procs[i] = proc
        self.spawned.append((i, proc.pid, processes.process_start_time(proc.pid)))
        log.debug("%s: n%d started, pid %d", self.name, i, proc.pid)

    def _log_event(self, i: int, what: str) -> None:
        _log_event(self.log_path(i), i, what)

    def wait_ready(self, ids: Iterable[int] | None = None, timeout_s: float | None = None) -> None:
        """Wait until each server's private port accepts connections.

        Raises ServerStartError, with the tail of the server's log, as soon as
        one of them has exited or when the deadline passes.
        """
        pending = [self._check(i) for i in (self.started_ids if ids is None else ids)]
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while pending:
            for i in list(pending):
                proc = self._res.procs.get(i)
                if proc is None:
                    raise ServerStartError(f"n{i} was never started")
                status = proc.poll()
                if status is not None:
                    raise ServerStartError(
                        f"n{i} exited with status {status} before listening on "
                        f"{self.private_addresses[i]}; {self._tail_for_error(i)}"
                    )
                if processes.port_open(self.host, self.private_ports[i]):
                    pending.remove(i)
            if pending and time.monotonic() >= deadline:
                i = pending[0]
                raise ServerStartError(
                    f"n{i} (pid {self._res.procs[i].pid}) did not listen on "
                    f"{self.private_addresses[i]} within {timeout_s}s; {self._tail_for_error(i)}"
                )
            if pending:
                time.sleep(0.01)

    def _tail_for_error(self, i: int) -> str:
        return f"last lines of {self.log_path(i)}:\n{self.log_tail(i, 30)}"

    def is_alive(self, i: int) -> bool:
        """Whether server ``i``'s process is running."""
        proc = self._res.procs.get(self._check(i))
        return proc is not None and proc.poll() is None

    def pid(self, i: int) -> int | None:
        """The pid of server ``i`` if it is running."""
        proc = self._res.procs.get(self._check(i))
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill(self, i: int) -> None:
        """SIGKILL server ``i`` (a crash: nothing unsynced survives) and reap it."""
        with self._lock:
            proc = self._res.procs.get(self._check(i))
            if proc is None or proc.returncode is not None:
                return
            alive = proc.poll() is None
            self._paused.discard(i)  # SIGKILL ends a stopped process too
            status = processes.kill(proc)
            self._log_event(
                i, f"pid {proc.pid} killed with SIGKILL" if alive else f"pid {proc.pid} exited"
            )
            log.debug("%s: n%d killed (status %s)", self.name, i, status)

    def pause(self, i: int) -> None:
        """SIGSTOP server ``i``: it keeps its sockets and state but runs nothing until resume."""
        with self._lock:
            proc = self._res.procs.get(self._check(i))
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"n{i} is not running: nothing to pause")
            proc.send_signal(signal.SIGSTOP)
            self._paused.add(i)
            self._log_event(i, f"pid {proc.pid} paused with SIGSTOP")

    def resume(self, i: int) -> None:
        """SIGCONT server ``i`` after :meth:`pause`; a no-op if it is not paused."""
        with self._lock:
            self._check(i)
            if i not in self._paused:
                return
            self._paused.discard(i)
            proc = self._res.procs.get(i)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                self._log_event(i, f"pid {proc.pid} resumed with SIGCONT")

    def terminate(self, i: int, timeout_s: float = 10.0) -> int | None:
        """SIGTERM server ``i`` (a clean stop) and reap it; exit status or None if not running."""
        with self._lock:
            self.resume(i)  # a stopped process would not see SIGTERM until continued
            proc = self._res.procs.get(self._check(i))
            if proc is None or proc.returncode is not None:
                return None
            status = processes.terminate(proc, timeout_s)
            self._log_event(i, f"pid {proc.pid} terminated, status {status}")
            return status

    def restart(self, i: int, *, wait: bool = True) -> None:
        """Start server ``i`` again on the same data dir and ports (killing it first if running)."""
        with self._lock:
            self.kill(i)
            self._spawn(i)
            if wait:
                self.wait_ready([i])

    def kill_all(self) -> None:
        with self._lock:
            for i in range(self.n):
                self.kill(i)

    def restart_all(self, *, wait: bool = True) -> None:
        """Kill every server, then start every member again (a whole-cluster crash and recovery)."""
        with self._lock:
            self.kill_all()
            ids = self.started_ids
            for i in ids:
                self._spawn(i)
            if wait:
                self.wait_ready(ids)

    # ----------------------------------------------------------------- faults

    def set_network(self, profile: str | NetworkProfile) -> None:
        """Switch the random drop/delay profile (``reliable``, ``lossy``, ``reordering``)."""
        self.control.set_profile(profile)

    def disconnect(self, i: int) -> None:
        """Lose all traffic to and from server ``i`` (it keeps running)."""
        self.control.disconnect(self._check(i))

    def reconnect(self, i: int) -> None:
        self.control.reconnect(self._check(i))

    def partition(self, *groups: Iterable[int]) -> None:
        """Split the servers: ``partition([0, 1], [2])``; a server in no group is alone."""
        checked = [[self._check(i) for i in group] for group in groups]
        self.control.partition(*checked)

    def heal(self) -> None:
        """End the partition (disconnections and client blocks stay)."""
        self.control.heal()

    def block_client(self, i: int, client_id: str) -> None:
        """Server ``i`` stops hearing from client ``client_id`` (its sender is ``c<id>``)."""
        self.control.block_client(self._check(i), client_id)

    def unblock_client(self, i: int, client_id: str) -> None:
        self.control.unblock_client(self._check(i), client_id)

    def hold_next_request(self, i: int, client_id: str, method: str, seconds: float) -> None:
        """Server ``i``'s proxy holds client ``client_id``'s next ``method`` request
        ``seconds`` in transit, then delivers it (see NetworkControl.hold_next_request)."""
        self.control.hold_next_request(self._check(i), client_id, method, seconds)

    def stats(self, i: int | None = None) -> TrafficStats:
        """Traffic counters of proxy ``i``, or of the whole cluster."""
        return self.network.stats(None if i is None else self._check(i))

    def reset_stats(self) -> None:
        self.network.reset_stats()

    # ------------------------------------------------------------------- logs

    def log_tail(self, i: int, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of server ``i``'s log ('' if it has none)."""
        path = self.log_path(i)
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 256 * 1024))
                data = f.read()
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def log_sections(self, lines: int = LOG_TAIL_LINES) -> list[tuple[str, str]]:
        """(title, text) per server log tail, the way pytest shows report sections."""
        return [
            (f"kvraft {self.name} n{i} log: last {lines} lines of {self.log_path(i)}", tail)
            for i in range(self.n)
            if (tail := self.log_tail(i, lines))
        ]

    # -------------------------------------------------------------- lifecycle

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Kill every server, stop the proxies, free the ports; idempotent."""
        with self._lock:
            self._finalizer()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"alive={[self.is_alive(i) for i in range(self.n)]}"
        return f"<Cluster {self.name} n={self.n} {state}>"
