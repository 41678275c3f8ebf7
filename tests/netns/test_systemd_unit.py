"""The shipped systemd unit's command line runs a cluster on three hosts.

No systemd runs here (and none in CI), so this test plays its part: it reads
``deploy/systemd/kvraft@.service`` and ``kvraft.env.example``, makes each
host's environment file the way docs/deploy.md says (the example with that
host's address), expands ``ExecStart`` as systemd does (``%i`` the instance,
``${VAR}`` one argument, ``$VAR`` split at spaces), and starts each node with
it in a namespace of its own. Only the install paths move into the test's
directory. Then it stops the leader as systemd would (``KillSignal``, within
``TimeoutStopSec``). What it cannot check without systemd: the hardening
options and the user; ``systemd-analyze verify`` checks the unit's syntax
where it is installed.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kvraft.client.async_client import AsyncClient
from kvraft.testing.waiting import wait_until

from .harness import NetnsCluster

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT = DEPLOY / "kvraft@.service"
ENV_EXAMPLE = DEPLOY / "kvraft.env.example"
INSTALLED_BINARY = "/opt/kvraft/bin/kvraft"


def service_settings(unit: Path) -> dict[str, list[str]]:
    """``[Service]`` settings, continuation lines joined; a setting given twice keeps both."""
    text = re.sub(r"\\\n", " ", unit.read_text())
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def read_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def host_env_file(cluster: NetnsCluster, i: int) -> str:
    """The example env file made node ``i``'s, as docs/deploy.md says to.

    The example is the first host's (node 0 at 10.0.0.1): on the peers line,
    the same on every host, example host 10.0.0.(k+1) is our node k; on every
    other line (the listen and metrics addresses) 10.0.0.1 is this node.
    """
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("KVRAFT_PEERS="):
            line = re.sub(
                r"\b10\.0\.0\.(\d+):",
                lambda m: cluster.hosts[int(m.group(1)) - 1].address + ":",
                line,
            )
        else:
            line = re.sub(r"\b10\.0\.0\.1:", cluster.hosts[i].address + ":", line)
        lines.append(line)
    return "\n".join(lines)


def expand_exec_start(line: str, instance: str, env: dict[str, str]) -> list[str]:
    """``ExecStart`` as systemd runs it: specifier %i, ${VAR} whole, $VAR word-split."""
    argv: list[str] = []
    for word in shlex.split(line.replace("%i", instance)):
        whole = re.fullmatch(r"\$\{(\w+)\}", word)
        split = re.fullmatch(r"\$(\w+)", word)
        if whole:
            argv.append(env.get(whole.group(1), ""))
        elif split:
            argv.extend(env.get(split.group(1), "").split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv


def test_the_unit_and_the_example_env_file_run_a_cluster_on_three_hosts(
    netns_cluster: Callable[..., NetnsCluster], tmp_path: Path
) -> None:
    """Each host's node started with the unit's ExecStart and its env file: a leader,
    writes from the client host, /health 200 on every metrics address of the env files,
    and the leader stopped with the unit's KillSignal hands over and exits 0 in time."""
    settings = service_settings(UNIT)
    (exec_start,) = settings["ExecStart"]
    assert settings["KillSignal"] == ["SIGTERM"]
    stop_timeout_s = float(settings["TimeoutStopSec"][0].removesuffix("s"))
    state_dir = tmp_path / "var-lib"

    def command(cluster: NetnsCluster, i: int) -> list[str]:
        env = read_env_file(host_env_file(cluster, i))
        argv = expand_exec_start(exec_start, str(i), env)
        assert argv[0] == INSTALLED_BINARY
        argv = [sys.executable, "-m", "kvraft", *argv[1:]]
        argv = [a.replace("/var/lib/kvraft/", f"{state_dir}/") for a in argv]
        return [str(cluster.peer_secret_file) if a == "/etc/kvraft/peer-secret" else a
                for a in argv]  # fmt: skip

    cluster = netns_cluster(3, command=command)
    leader = cluster.find_leader(30.0)
    argv = cluster.server_command(1)
    assert argv[argv.index("--listen") + 1] == "10.88.0.12:7001"
    assert argv[argv.index("--data-dir") + 1] == f"{state_dir}/n1"
    assert argv[argv.index("--metrics-listen") + 1] == "10.88.0.12:9101"
    assert argv[argv.index("--peers") + 1] == ",".join(
        f"{i}={a}" for i, a in enumerate(cluster.addresses)
    )
    assert cluster.client_loop is not None

    async def write() -> None:
        async with AsyncClient(cluster.addresses, deadline=30.0) as client:
            await client.put("deployed", "yes", 0)

    async def health_lines() -> list[str]:
        lines = []
        for i in cluster.ids:
            reader, writer = await asyncio.open_connection(cluster.hosts[i].address, 9101)
            writer.write(b"GET /health HTTP/1.1\r\nHost: kvraft\r\nConnection: close\r\n\r\n")
            lines.append((await reader.readline()).decode().strip())
            writer.close()
        return lines

    def all_healthy() -> bool:
        assert cluster.client_loop is not None
        return all(" 200 " in line for line in cluster.client_loop.run(health_lines()))

    cluster.client_loop.run(write())
    wait_until(all_healthy, 30.0, interval_s=0.1, message="/health 200 on every node")

    started = time.monotonic()
    before = len(cluster.log_path(leader).read_text().splitlines())
    kill_signal = signal.Signals[settings["KillSignal"][0]]
    status = cluster.terminate(leader, timeout_s=stop_timeout_s, sig=kill_signal)
    assert status == 0
    assert time.monotonic() - started < stop_timeout_s
    lines = "\n".join(cluster.log_path(leader).read_text().splitlines()[before:])
    assert re.search(r"handed leadership to n\d+", lines), lines


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_finds_nothing_but_the_uninstalled_binary(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on an instance of the unit: its only complaint is that
    /opt/kvraft/bin/kvraft is not installed here."""
    (tmp_path / UNIT.name).write_text(UNIT.read_text())
    (tmp_path / "kvraft@0.service").symlink_to(UNIT.name)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "kvraft@0.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [line for line in done.stderr.splitlines() if line.strip()]
    assert all(INSTALLED_BINARY in line for line in complaints), done.stderr
