"""``kvraft cluster``, ``put``, ``get``, ``status`` and ``bench`` against real local clusters."""

from __future__ import annotations

import json
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kvraft.testing.processes import pid_alive
from kvraft.testing.waiting import wait_until
from tests.cli.conftest import (
    CliCluster,
    assert_one_line_error,
    free_base_port,
    run_cli,
    statuses,
)

pytestmark = pytest.mark.slow

EXIT_OP_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


def stopped_cleanly(cluster: CliCluster) -> None:
    """Ctrl-C ends the cluster with status 0, every node stopped by its own clean shutdown."""
    assert cluster.ctrl_c() == 0, cluster.stderr()
    err = cluster.stderr()
    assert "Traceback" not in err, err
    assert "kvraft: all nodes stopped" in err
    for pid in cluster.node_pids:
        assert not pid_alive(pid), f"node pid {pid} outlived the cluster"


def test_put_get_and_operation_errors(shared_cli_cluster: CliCluster) -> None:
    env = shared_cli_cluster.env
    put = run_cli("put", "greeting", "hello", env=env)
    assert (put.returncode, put.stdout) == (0, "ok\t(version 1)\n"), put.stderr
    got = run_cli("get", "greeting", "--json", env=env)
    assert json.loads(got.stdout) == {"key": "greeting", "value": "hello", "version": 1}
    put = run_cli("put", "greeting", "bonjour", "--version", "1", env=env)
    assert put.stdout == "ok\t(version 2)\n", put.stderr
    got = run_cli("get", "greeting", env=env)
    assert got.stdout == "bonjour\t(version 2)\n", got.stderr

    # operation errors: exit 1, one line
    stale = run_cli("put", "greeting", "hallo", "--version", "1", env=env)
    assert_one_line_error(stale, EXIT_OP_ERROR, "VersionMismatch", "version 2")
    missing = run_cli("get", "nothing-here", env=env)
    assert_one_line_error(missing, EXIT_OP_ERROR, "NoKey")
    missing_put = run_cli("put", "nothing-here", "v", "--version", "3", env=env)
    assert_one_line_error(missing_put, EXIT_OP_ERROR, "NoKey")
    value = run_cli("put", "from-stdin", "-", env=env, input="line 1\nline 2\n")
    assert value.returncode == 0, value.stderr
    got = run_cli("get", "from-stdin", "--json", env=env)
    assert json.loads(got.stdout)["value"] == "line 1\nline 2\n"


def test_status_table_shows_every_node_and_the_unreachable(
    shared_cli_cluster: CliCluster,
) -> None:
    cluster = shared_cli_cluster
    dead = f"127.0.0.1:{free_base_port(1)}"
    status = run_cli("status", "--servers", ",".join([*cluster.servers, dead]))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split() == [
        "id", "address", "role", "term", "commit", "applied", "log", "snapshot", "leader",
    ]  # fmt: skip
    rows = {line.split()[1]: line.split() for line in lines[1:-1]}
    assert {rows[a][2] for a in cluster.servers} <= {"leader", "follower"}
    assert sum(rows[a][2] == "leader" for a in cluster.servers) == 1
    assert rows[dead][2] == "unreachable" and "connection refused" in " ".join(rows[dead])
    assert "3/4 nodes reachable; leader n" in lines[-1]
    as_json = json.loads(run_cli("status", "--json", env=cluster.env).stdout)
    assert sorted(r["id"] for r in as_json) == [0, 1, 2]
    assert all(r["reachable"] and r["applied_index"] >= 1 for r in as_json)
    fields = {"role", "term", "commit_index", "applied_index", "log_length", "snapshot_index"}
    assert fields <= set(as_json[0]) and "leader_id" in as_json[0]


def test_the_banner_names_each_nodes_metrics_and_they_answer(
    shared_cli_cluster: CliCluster,
) -> None:
    """``kvraft cluster`` serves metrics on BASE_PORT + 100 + i and prints each URL."""
    cluster = shared_cli_cluster
    urls = [
        line.split("metrics: ", 1)[1]
        for line in cluster.stdout().splitlines()
        if line.strip().startswith("metrics: ")
    ]
    ports = [int(a.rsplit(":", 1)[1]) + 100 for a in cluster.servers]
    assert urls == [f"http://127.0.0.1:{p}/metrics" for p in ports]

    def healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(url.replace("/metrics", "/health"), timeout=5) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    wait_until(lambda: all(healthy(u) for u in urls), 30, interval_s=0.1, message="/health 200")
    with urllib.request.urlopen(urls[0], timeout=5) as response:
        assert "kvraft_server_has_leader 1.0" in response.read().decode()


def test_ctrl_c_stops_every_node_and_a_rerun_resumes_the_data(
    start_cli_cluster: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    cluster: CliCluster = start_cli_cluster(data_dir=data_dir)
    cluster.wait_ready()
    out = cluster.stdout()
    assert "3-node cluster" in out and f"export KVRAFT_SERVERS={','.join(cluster.servers)}" in out
    assert "kvraft put" in out and "kvraft status" in out
    assert len(cluster.node_pids) == 3
    assert json.loads((data_dir / "cluster.json").read_text()) == {"nodes": 3}
    secret_file = data_dir / "peer-secret"  # secured by default: a secret of its own, 0600
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_bytes()
    assert "became leader" in cluster.stderr(), "nodes log at info by default"
    put = run_cli("put", "kept", "across restarts", env=cluster.env)
    assert put.returncode == 0, put.stderr

    stopped_cleanly(cluster)

    # a rerun on the same data resumes it (and --log-level reaches the nodes)
    again: CliCluster = start_cli_cluster("--log-level", "warning", data_dir=data_dir)
    again.wait_ready()
    assert secret_file.read_bytes() == secret, "a rerun keeps the cluster's secret"
    got = run_cli("get", "kept", env=again.env)
    assert got.stdout == "across restarts\t(version 1)\n", got.stderr
    assert " INFO " not in again.stderr(), "--log-level warning was not passed to the nodes"
    stopped_cleanly(again)


def test_five_node_cluster(start_cli_cluster: Any) -> None:
    cluster: CliCluster = start_cli_cluster(nodes=5)
    cluster.wait_ready()
    rows = statuses(cluster.servers)
    assert sorted(r["id"] for r in rows) == [0, 1, 2, 3, 4]
    assert sum(r["role"] == "leader" for r in rows) == 1
    put = run_cli("put", "five", "nodes", env=cluster.env)
    assert put.returncode == 0, put.stderr
    # the put is on a majority: every node applies it soon
    wait_until(
        lambda: all(r.get("applied_index", 0) >= 2 for r in statuses(cluster.servers)),
        10,
        message="all five nodes applied the put",
    )
    stopped_cleanly(cluster)


def test_cluster_stops_every_node_when_one_cannot_start(
    start_cli_cluster: Any, tmp_path: Path
) -> None:
    base = free_base_port(3)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        cluster: CliCluster = start_cli_cluster(base_port=base)
        status = cluster.proc.wait(30)
    err = cluster.stderr()
    assert status == EXIT_OP_ERROR, err
    assert "Traceback" not in err
    assert f"cannot listen on 127.0.0.1:{base + 1}: address already in use" in err
    assert "node n1 exited with status 1; stopping the others" in err


def test_bench_reports_a_table_and_json(shared_cli_cluster: CliCluster, tmp_path: Path) -> None:
    cluster = shared_cli_cluster
    out = tmp_path / "bench.json"
    args = ["--duration", "0.5", "--warmup", "0.2", "--clients", "4", "--keys", "20"]
    result = run_cli("bench", *args, "--workload", "mixed", "--json", str(out), env=cluster.env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "no progress line unless stderr is a terminal"
    table = result.stdout.splitlines()
    assert table[1].split()[:7] == ["op", "ops", "ops/s", "p50", "ms", "p95", "ms"]
    assert [line.split()[0] for line in table[2:5]] == ["get", "put", "all"]
    assert table[5].startswith("client CPU: ")
    data = json.loads(out.read_text())
    assert data["config"]["workload"] == "mixed" and data["config"]["clients"] == 4
    for kind in ("get", "put", "all"):
        summary = data["results"][kind]
        assert summary["ops"] > 0 and summary["errors"] == {}
        assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert (
        data["results"]["all"]["ops"]
        == data["results"]["get"]["ops"] + data["results"]["put"]["ops"]
    )

    progress = run_cli("bench", *args, "--progress", "--json", "-", env=cluster.env)
    assert progress.returncode == 0, progress.stderr
    assert json.loads(progress.stdout)["results"]["put"]["ops"] > 0, "--json -: JSON alone"
    lines = progress.stderr.splitlines()
    assert any(line.startswith("measuring") and "ops/s" in line for line in lines), lines


def test_servers_default_to_the_environment(shared_cli_cluster: CliCluster) -> None:
    """$KVRAFT_SERVERS is used when --servers is not given, and --servers wins over it."""
    cluster = shared_cli_cluster
    assert run_cli("put", "env", "yes", env=cluster.env).returncode == 0
    wrong = {"KVRAFT_SERVERS": f"127.0.0.1:{free_base_port(1)}"}
    got = run_cli("get", "env", "--servers", ",".join(cluster.servers), env=wrong)
    assert got.stdout == "yes\t(version 1)\n", got.stderr
    unavailable = run_cli("get", "env", "--deadline", "0.3", env=wrong)
    assert unavailable.returncode == EXIT_UNAVAILABLE
