"""No server process outlives its test, however the test (or pytest itself) ends.

Processes are named by (pid, start time), so a recycled pid is never mistaken
for a survivor. The teardown cases run an inner pytest in a subprocess, with
the suite's cluster plugin (``tests/support/cluster_fixtures.py``) loaded, and
check the servers while that pytest is still alive (so the parent-death signal
cannot be what killed them); the parent-death cases kill a cluster's parent
process outright.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvraft.testing import processes
from kvraft.testing.cluster import Cluster
from kvraft.testing.waiting import wait_until

Proc = tuple[int, int | None]
ROOT = Path(__file__).resolve().parents[2]


def survivors(procs: list[Proc]) -> list[Proc]:
    return [p for p in procs if processes.pid_alive(*p)]


def test_close_kills_every_server_and_proxy(tmp_path: Path, standin_command: list[str]) -> None:
    cluster = Cluster(2, base_dir=tmp_path, command=standin_command)
    cluster.restart(1)
    procs: list[Proc] = [(pid, started) for _, pid, started in cluster.spawned]
    assert len(procs) == 3 and len(survivors(procs)) == 2
    cluster.close()
    assert survivors(procs) == []
    host, port = cluster.addresses[0].rsplit(":", 1)
    assert not processes.port_open(host, int(port))
    assert "killed at cluster close" in cluster.log_tail(0)
    cluster.close()  # idempotent


INNER_TESTS = """
import json, os, signal, time
from pathlib import Path

import pytest

from kvraft.testing import processes

# A suite started as a background job (`make test &`, a CI runner) runs with
# SIGINT ignored, and an ignored signal survives exec: Python would then install
# no KeyboardInterrupt handler here and Ctrl-C would do nothing. Put it back.
signal.signal(signal.SIGINT, signal.default_int_handler)

PIDS = Path(os.environ["KVRAFT_TEST_PIDS"])
COMMAND = json.loads(os.environ["KVRAFT_TEST_COMMAND"])


@pytest.fixture
def kvraft_server_command():
    return COMMAND


def record(cluster):
    with PIDS.open("a") as f:
        for _, pid, started in cluster.spawned:
            f.write(json.dumps([pid, started]) + "\\n")


def test_passes(make_cluster):
    record(make_cluster(2))


def test_fails(make_cluster):
    record(make_cluster(2))
    assert False, "deliberate failure"


@pytest.mark.timeout(3)
def test_times_out(make_cluster):
    record(make_cluster(2))
    time.sleep(60)


def test_hangs_until_interrupted(make_cluster):
    if not os.environ.get("KVRAFT_TEST_INTERRUPT"):
        pytest.skip("only in the interrupt run")
    record(make_cluster(2))
    time.sleep(60)


def test_no_server_outlived_its_test():
    if os.environ.get("KVRAFT_TEST_INTERRUPT"):
        pytest.skip("not in the interrupt run")
    procs = [json.loads(line) for line in PIDS.read_text().splitlines()]
    assert len(procs) == 6
    assert [p for p in procs if processes.pid_alive(*p)] == []
"""


def run_inner_pytest(
    tmp_path: Path, standin_command: list[str], *, interrupt: bool = False
) -> tuple[subprocess.Popen[str], Path]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    pids = tmp_path / "pids.jsonl"
    env = dict(
        os.environ,
        KVRAFT_TEST_PIDS=str(pids),
        KVRAFT_TEST_COMMAND=json.dumps(standin_command),
    )
    env.pop("PYTEST_ADDOPTS", None)
    # The suite's plugin, imported from this checkout's tests tree (it is not shipped).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "pytest", "-p", "tests.support.cluster_fixtures"]
    argv += ["-p", "no:cacheprovider", "-q", "-rA", "--basetemp", str(tmp_path / "inner")]
    argv.append("test_inner.py")
    if interrupt:
        env["KVRAFT_TEST_INTERRUPT"] = "1"
        argv += ["-k", "test_hangs_until_interrupted"]
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, pids


def test_teardown_reaps_after_pass_failure_and_timeout(
    tmp_path: Path, standin_command: list[str]
) -> None:
    """Inner tests pass, fail and time out; a later inner test finds no survivor."""
    proc, pids = run_inner_pytest(tmp_path, standin_command)
    output, _ = proc.communicate(timeout=60)
    assert "PASSED test_inner.py::test_no_server_outlived_its_test" in output, output
    assert "FAILED test_inner.py::test_fails" in output, output
    assert "FAILED test_inner.py::test_times_out" in output, output
    # The failure reports carry the tail of every server's log.
    assert "deliberate failure" in output
    assert output.count("- kvraft test_fails0 n0 log: last 60 lines") == 1, output
    assert "n1 serving on" in output
    procs = [tuple(json.loads(line)) for line in pids.read_text().splitlines()]
    assert survivors(procs) == []  # type: ignore[arg-type]


def test_interrupted_run_reaps(tmp_path: Path, standin_command: list[str]) -> None:
    """Ctrl-C (SIGINT) in the middle of a test: pytest tears down, the cluster closes."""
    proc, pids = run_inner_pytest(tmp_path, standin_command, interrupt=True)
    try:
        wait_until(lambda: pids.exists() and pids.read_text().count("\n") == 2, 30.0)
        os.kill(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in output, output
    procs = [tuple(json.loads(line)) for line in pids.read_text().splitlines()]
    assert survivors(procs) == []  # type: ignore[arg-type]
    # Killed by the fixture's teardown, not by the parent-death signal.
    logs = [p.read_text() for p in (tmp_path / "inner").rglob("n[01].log")]
    assert len(logs) == 2 and all("killed at cluster close" in text for text in logs)


PARENT_SCRIPT = """
import gc, json, sys, time

from kvraft.testing.cluster import Cluster

mode, base, command = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cluster = Cluster(2, base_dir=base, command=command)
print(json.dumps([[pid, started] for _, pid, started in cluster.spawned]), flush=True)
if mode == "gc":
    sys.stdin.readline()  # the test has seen the servers running
    del cluster
    gc.collect()
    print("collected", flush=True)
elif mode == "exit":
    sys.exit(0)
time.sleep(60)
"""


def start_parent(
    tmp_path: Path, standin_command: list[str], mode: str
) -> tuple[subprocess.Popen[str], list[Proc]]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    argv = [sys.executable, str(script), mode, str(tmp_path / "c"), json.dumps(standin_command)]
    parent = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line, f"parent exited with {parent.wait()}"
    procs: list[Proc] = [(pid, started) for pid, started in json.loads(line)]
    assert len(survivors(procs)) == 2 or mode == "exit"
    return parent, procs


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_servers_die_with_their_parent(
    tmp_path: Path, standin_command: list[str], sig: signal.Signals
) -> None:
    """A test process killed hard (no teardown, no atexit) leaves no orphan servers."""
    parent, procs = start_parent(tmp_path, standin_command, "hang")
    os.kill(parent.pid, sig)
    assert parent.wait(10) == -sig
    wait_until(lambda: survivors(procs) == [], 5.0, message="servers die with their parent")


def test_servers_die_when_the_parent_exits_without_closing(
    tmp_path: Path, standin_command: list[str]
) -> None:
    parent, procs = start_parent(tmp_path, standin_command, "exit")
    assert parent.wait(10) == 0
    assert survivors(procs) == []  # killed and reaped at interpreter exit, before it ended
    assert "killed at cluster close" in (tmp_path / "c" / "n0.log").read_text()


def test_a_forgotten_cluster_is_reaped_when_collected(
    tmp_path: Path, standin_command: list[str]
) -> None:
    parent, procs = start_parent(tmp_path, standin_command, "gc")
    try:
        assert parent.stdin is not None and parent.stdout is not None
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "collected\n"
        assert survivors(procs) == []  # while the parent still runs
    finally:
        parent.kill()
        parent.wait()
