"""Helpers for the command-line tests: run ``kvraft`` as a real process, start local clusters.

Every test here runs the product's entry point (``python -m kvraft``) in a
subprocess, so what is asserted is what a user sees: the exit status and the
bytes on stdout and stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest

from kvraft.client.admin import fetch_statuses_async
from kvraft.testing.waiting import wait_until

KVRAFT = [sys.executable, "-m", "kvraft"]
CLI_TIMEOUT_S = 60.0


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """``kvraft ARGS...`` to completion; $KVRAFT_SERVERS unset unless ``env`` sets it."""
    full_env = {k: v for k, v in os.environ.items() if k != "KVRAFT_SERVERS"}
    full_env.update(env or {})
    return subprocess.run(
        [*KVRAFT, *args],
        env=full_env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> str:
    """Assert exit ``code`` after exactly one line on stderr, containing ``fragments``."""
    stderr = result.stderr
    assert result.returncode == code, f"exit {result.returncode}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_base_port(n: int) -> int:
    """A port P with P..P+n-1 free, below the range the kernel hands out to connections.

    P+100..P+100+n-1 too: ``kvraft cluster`` serves each node's metrics there.
    """
    for _ in range(500):
        base = random.randrange(12000, 30000)
        if all(bindable(base + i) and bindable(base + 100 + i) for i in range(n)):
            return base
    raise RuntimeError("no run of free ports")


def statuses(servers: Sequence[str], timeout: float = 0.5) -> list[dict[str, Any]]:
    return asyncio.run(fetch_statuses_async(servers, timeout))


def has_leader(servers: Sequence[str]) -> bool:
    rows = statuses(servers)
    return all(r.get("reachable") for r in rows) and any(r.get("role") == "leader" for r in rows)


@dataclass
class SessionProcess:
    """A ``kvraft`` command in its own session, as if run from a terminal.

    Its stdout and stderr go to files, not pipes: a pipe nobody reads until
    the end blocks the process once it fills. It runs with faulthandler on, so
    that one which does not stop on Ctrl-C can be made to show where each of
    its threads is.
    """

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @classmethod
    def launch(
        cls,
        tmp_dir: Path,
        stem: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Self:
        """``argv`` started in a new session, output to ``tmp_dir/STEM<k>.out`` and
        ``.err``; ``fields``: a subclass's own."""
        k = len(list(tmp_dir.glob(f"{stem}*.out")))
        out, err = tmp_dir / f"{stem}{k}.out", tmp_dir / f"{stem}{k}.err"
        full_env = {**os.environ, **(env or {}), "PYTHONFAULTHANDLER": "1"}
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(argv, stdout=o, stderr=e, env=full_env, start_new_session=True)
        return cls(proc, out, err, **fields)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def ctrl_c(self, timeout_s: float = 20.0) -> int:
        """SIGINT to the whole process group, as a terminal's Ctrl-C; the exit status.

        A process still running ``timeout_s`` later is made to dump its
        threads' stacks (SIGABRT, through faulthandler) and the test fails
        showing them.
        """
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            masks = self.signal_masks()
            os.killpg(self.proc.pid, signal.SIGABRT)
            self.proc.wait(timeout_s)
            pytest.fail(
                f"{self.proc.args!r} did not exit {timeout_s}s after SIGINT"
                f" ({masks}):\n{self.stderr()}"
            )

    def signal_masks(self) -> str:
        """The process's pending, blocked, ignored and caught signals, from /proc (Linux)."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return "no /proc status"
        return ", ".join(
            line.replace("\t", " ")
            for line in status.splitlines()
            if line.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class CliCluster(SessionProcess):
    """A ``kvraft cluster`` process in its own session, as if run from a terminal."""

    servers: list[str] = field(default_factory=list)
    node_pids: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"KVRAFT_SERVERS": ",".join(self.servers)}

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"cluster exited early:\n{self.stderr()}"
            return has_leader(self.servers)

        wait_until(ready, timeout_s, interval_s=0.05, message="a leader among all nodes")
        self.node_pids = [
            int(line.rsplit("pid", 1)[1])
            for line in self.stdout().splitlines()
            if line.strip().startswith("n") and " pid " in line
        ]


def launch_cli_cluster(
    tmp_dir: Path,
    *args: str,
    nodes: int = 3,
    data_dir: Path | None = None,
    base_port: int | None = None,
) -> CliCluster:
    """Start ``kvraft [ARGS] cluster`` in a new session; output goes to files in ``tmp_dir``."""
    base = base_port if base_port is not None else free_base_port(nodes)
    data = data_dir or tmp_dir / "data"
    argv = [*KVRAFT, *args, "cluster", "--nodes", str(nodes)]
    argv += ["--base-port", str(base), "--data-dir", str(data)]
    servers = [f"127.0.0.1:{base + i}" for i in range(nodes)]
    return CliCluster.launch(tmp_dir, "cluster", argv, servers=servers)


@pytest.fixture
def start_cli_cluster(tmp_path: Path) -> Iterator[Any]:
    """``start_cli_cluster(*args, nodes=3, data_dir=None, base_port=None)``: a cluster process.

    Killed (the whole process group) at teardown if a test left it running.
    """
    started: list[CliCluster] = []

    def start(*args: str, **kwargs: Any) -> CliCluster:
        cluster = launch_cli_cluster(tmp_path, *args, **kwargs)
        started.append(cluster)
        return cluster

    try:
        yield start
    finally:
        for cluster in started:
            cluster.kill()


@pytest.fixture(scope="module")
def shared_cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    """One running 3-node ``kvraft cluster`` for tests that only use it (and do not stop it)."""
    cluster = launch_cli_cluster(tmp_path_factory.mktemp("shared"))
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.kill()
