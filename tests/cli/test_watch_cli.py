"""``kvraft watch`` and ``kvraft compact`` against a running ``kvraft cluster``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvraft.cli_common import EXIT_INTERRUPTED, EXIT_OP_ERROR, EXIT_USAGE
from kvraft.testing.waiting import wait_until

from .conftest import KVRAFT, CliCluster, SessionProcess, assert_one_line_error, run_cli

pytestmark = pytest.mark.slow

WAIT_S = 30.0


def start_watch(tmp_path: Path, env: dict[str, str], *args: str) -> SessionProcess:
    return SessionProcess.launch(tmp_path, "watch", [*KVRAFT, "watch", *args], env)


def test_watch_prints_one_line_per_event_until_ctrl_c(
    shared_cli_cluster: CliCluster, tmp_path: Path
) -> None:
    env = shared_cli_cluster.env
    assert run_cli("set", "cfg/a", "1", env=env).returncode == 0
    first = json.loads(run_cli("get", "--prefix", "cfg/", "--json", env=env).stdout)["revision"]
    assert run_cli("set", "cfg/a", "2", env=env).returncode == 0
    assert run_cli("del", "cfg/a", env=env).returncode == 0
    assert run_cli("set", "other", "x", env=env).returncode == 0
    watch = start_watch(tmp_path, env, "--prefix", "cfg/", "--rev", str(first), "--prev-kv")
    try:
        wait_until(lambda: len(watch.stdout().splitlines()) >= 3, WAIT_S, message="three events")
        assert run_cli("set", "cfg/b", "live", env=env).returncode == 0  # one that happens now
        wait_until(lambda: len(watch.stdout().splitlines()) >= 4, WAIT_S, message="the live event")
        assert watch.stdout().splitlines() == [
            f"{first}\tput\tcfg/a\t1",
            f"{first + 1}\tput\tcfg/a\t2\tprev=1",
            f"{first + 2}\tdelete\tcfg/a\tprev=2",
            f"{first + 4}\tput\tcfg/b\tlive",
        ]
    finally:
        code = watch.ctrl_c(WAIT_S)
    stderr = watch.stderr()
    assert code == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr


def test_watch_json_and_compact(shared_cli_cluster: CliCluster, tmp_path: Path) -> None:
    env = shared_cli_cluster.env
    for value in ("1", "2", "3"):
        assert run_cli("set", "j", value, env=env).returncode == 0
    now = json.loads(run_cli("get", "--prefix", "j", "--json", env=env).stdout)["revision"]
    done = run_cli("compact", str(now), env=env)
    assert (done.returncode, done.stdout) == (0, f"compacted\t(history starts at revision {now})\n")
    old = run_cli("watch", "j", "--rev", str(now - 1), env=env)
    assert_one_line_error(old, EXIT_OP_ERROR, "Compacted", f"starts at {now}")
    watch = start_watch(tmp_path, env, "j", "--rev", str(now), "--json")
    try:
        wait_until(lambda: len(watch.stdout().splitlines()) >= 1, WAIT_S, message="the event")
        event = json.loads(watch.stdout().splitlines()[0])
        assert event["type"] == "put" and event["revision"] == now
        assert event["kv"]["value"] == "3" and event["prev_kv"] is None
    finally:
        code = watch.ctrl_c(WAIT_S)
    assert code == EXIT_INTERRUPTED, watch.stderr()


def test_watch_and_compact_usage_errors(shared_cli_cluster: CliCluster) -> None:
    env = shared_cli_cluster.env
    assert_one_line_error(run_cli("watch", env=env), EXIT_USAGE, "give KEY or --prefix")
    assert_one_line_error(run_cli("watch", "k", "--prefix", "p", env=env), EXIT_USAGE)
    assert_one_line_error(run_cli("watch", "k", "--rev", "0", env=env), EXIT_USAGE)
    assert_one_line_error(run_cli("compact", "0", env=env), EXIT_USAGE)
