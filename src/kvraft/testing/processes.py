"""Server processes that cannot outlive the test process: spawning, killing, probing.

Three layers make sure no server survives its test, whatever happens to it:

1. the harness kills every process it started when a cluster closes (test
   teardown, ``weakref.finalize`` at garbage collection and interpreter exit);
2. each server runs in its own session and process group, so a kill reaches
   anything the server itself started, and a Ctrl-C at the terminal reaches
   only pytest, which then tears down in order;
3. if the test process dies hard (SIGKILL, a crash, pytest-timeout's
   ``os._exit``), Linux sends every server SIGKILL: each is started through a
   tiny launcher that sets ``PR_SET_PDEATHSIG`` and then ``exec``s the server
   command (the setting survives ``exec``).

Why a launcher rather than ``preexec_fn``: the test process has threads (the
proxy loop), and running Python between ``fork`` and ``exec`` in a threaded
process can deadlock. Why a dedicated spawner thread: the parent-death signal
fires when the *thread* that forked the child exits, so a server started from a
short-lived thread would be killed with it; all spawning happens on one
long-lived thread instead.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path

# Runs with ``python -S -c``: stdlib only, no site-packages, a few ms to start.
# argv: [expected parent pid, command...]. Sets the parent-death signal, checks
# the parent did not die before that (the signal would then never come), execs.
_LAUNCHER = """\
import os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
if os.getppid() != parent:
    os._exit(70)
os.execvp(sys.argv[2], sys.argv[2:])
"""


class _Spawner:
    """One long-lived daemon thread that starts every server process.

    A daemon thread, unlike a ThreadPoolExecutor's worker, is not joined at
    interpreter exit before the ``atexit`` hooks run; so a cluster left open
    is still closed in order by its finalizer (with its log lines) rather than
    SIGKILLed by the parent-death signal as the spawner thread goes away.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(
        self, start: Callable[[], subprocess.Popen[bytes]]
    ) -> Future[subprocess.Popen[bytes]]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="kvraft-spawner", daemon=True
                )
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._queue.put((start, future))
        return future

    def _run(self) -> None:
        while True:
            start, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(start())
            except BaseException as exc:
                future.set_exception(exc)


_spawner = _Spawner()


def launcher_argv(command: Sequence[str]) -> list[str]:
    """The argv that runs ``command`` so that it dies with this process."""
    return [sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid()), *command]


def spawn(
    command: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new session, stdout and stderr appended to ``log_path``.

    The child gets SIGKILL if this process dies (Linux), whichever thread calls.
    """
    argv = launcher_argv(command)
    child_env = dict(os.environ if env is None else env)
    # Log lines must reach the file before a SIGKILL, not sit in a buffer.
    child_env.setdefault("PYTHONUNBUFFERED", "1")

    def start() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )

    future = _spawner.submit(start)
    try:
        return future.result()
    except BaseException:
        # Interrupted (Ctrl-C) while the spawner thread was starting it: the
        # caller will never know this process, so it must not survive.
        future.add_done_callback(_kill_if_started)
        raise


def _kill_if_started(future: Future[subprocess.Popen[bytes]]) -> None:
    if not future.cancelled() and future.exception() is None:
        kill(future.result())


def kill(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """SIGKILL ``proc``'s process group and reap it; its exit status."""
    if proc.returncode is None:
        # Not reaped yet, so the pid (and the group it leads) is still ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return proc.wait(timeout_s)


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """SIGTERM ``proc`` and wait for it; SIGKILL if it outlives ``timeout_s``."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return kill(proc)


# --------------------------------------------------------------- probing pids


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None if gone.

    A pid plus its start time names one process for good: pids are reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has finished running
        return None
    return int(fields[19])


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` runs (zombies do not) and, if given, started at ``start_time``."""
    if sys.platform.startswith("linux"):
        started = process_start_time(pid)
        return started is not None and (start_time is None or started == start_time)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------- ports

_reserved_ports: set[int] = set()
_ports_lock = threading.Lock()

#: ``LOW-HIGH`` (inclusive): the only ports :func:`reserve_port` picks from, for
#: test runs split over several processes (pytest-xdist workers). The ports a
#: process reserves are remembered only by that process, so two processes picking
#: from one range could hand out the same port while one of its servers is down
#: between a kill and a restart; disjoint ranges make that impossible.
PORT_RANGE_ENV = "KVRAFT_TEST_PORTS"


def port_range_share(index: int, count: int) -> str | None:
    """Share ``index`` of ``count`` equal shares of the default range, as a value for
    ``$KVRAFT_TEST_PORTS``; None when the kernel's ephemeral range leaves no room."""
    span = _port_range(_ephemeral_low(), from_env=False)
    if span is None or not 0 <= index < count:
        return None
    width = (span[1] - span[0] + 1) // count
    low = span[0] + index * width
    return f"{low}-{low + width - 1}"


def _port_range(low_ephemeral: int, from_env: bool = True) -> tuple[int, int] | None:
    """The ports to pick from: ``$KVRAFT_TEST_PORTS``, else 10000 up to the kernel's
    ephemeral range (None when that leaves no room: ``bind(0)`` is the fallback)."""
    spec = os.environ.get(PORT_RANGE_ENV) if from_env else None
    if spec:
        try:
            low_text, high_text = spec.split("-")
            low, high = int(low_text), int(high_text)
        except ValueError:
            raise ValueError(f"{PORT_RANGE_ENV}={spec!r}: expected LOW-HIGH") from None
        if not 1024 <= low < high <= 65535:
            raise ValueError(f"{PORT_RANGE_ENV}={spec!r}: expected 1024 <= LOW < HIGH <= 65535")
        return low, high
    if low_ephemeral > 12000:
        return 10000, low_ephemeral - 1
    return None


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low


def reserve_port(host: str = "127.0.0.1") -> int:
    """A free TCP port for a server to listen on now and again after every restart.

    Chosen below the kernel's ephemeral range when there is room: a port handed
    out by ``bind(0)`` is one the kernel may give any outgoing connection while
    the server is down between a kill and a restart, and the restart would then
    fail with "address in use". Ports are remembered until :func:`release_ports`.
    ``$KVRAFT_TEST_PORTS`` (``LOW-HIGH``) narrows the choice to a range of this
    process's own; with it set, no free port there raises RuntimeError.
    """
    span = _port_range(_ephemeral_low())
    with _ports_lock:
        if span is not None:
            for _ in range(200):
                port = random.randint(*span)
                if port not in _reserved_ports and _bindable(host, port):
                    _reserved_ports.add(port)
                    return port
            if os.environ.get(PORT_RANGE_ENV):
                raise RuntimeError(f"no free port in {PORT_RANGE_ENV}={span[0]}-{span[1]}")
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _reserved_ports:
                _reserved_ports.add(port)
                return port


def release_ports(ports: Sequence[int]) -> None:
    with _ports_lock:
        _reserved_ports.difference_update(ports)


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
