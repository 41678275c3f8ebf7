"""Every mistake a user can make on the command line ends with one line and a documented exit code.

Exit codes (kvraft.cli): 1 operation error, 2 usage error, 3 cluster
unavailable. Each test runs the real entry point in a subprocess and asserts
on its exit status and stderr: exactly one line, no traceback.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from kvraft.kv_protocol import DEFAULT_MAX_VALUE_BYTES
from kvraft.storage.sqlite import SqliteStorage
from tests.cli.conftest import assert_one_line_error, free_base_port, run_cli

EXIT_OP_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


def server_args(tmp_path: Path, *, node_id: int = 0, peers: str | None = None) -> list[str]:
    port = free_base_port(2)
    peers = peers or f"0=127.0.0.1:{port},1=127.0.0.1:{port + 1}"
    listen = f"127.0.0.1:{port + node_id}"
    secret = tmp_path / "peer-secret"
    secret.write_text("a-test-secret-of-enough-bytes\n")
    return ["server", "--id", str(node_id), "--listen", listen, "--peers", peers,
            "--data-dir", str(tmp_path / "n"), "--peer-secret-file", str(secret)]  # fmt: skip


def without_secret(args: list[str]) -> list[str]:
    """``args`` with the ``--peer-secret-file`` flag and its value removed."""
    i = args.index("--peer-secret-file")
    return args[:i] + args[i + 2 :]


def closed_address() -> str:
    """An address where nothing listens."""
    return f"127.0.0.1:{free_base_port(1)}"


# ------------------------------------------------------------------ usage (exit 2)


@pytest.mark.parametrize(
    ("peers", "fragment"),
    [
        ("garbage", "expected ID=HOST:PORT, got 'garbage'"),
        ("0=127.0.0.1:7001,x=127.0.0.1:7002", "got 'x=127.0.0.1:7002'"),
        ("0=127.0.0.1:7001,1=nohostport", "peer 1: not a host:port address: 'nohostport'"),
        ("0=127.0.0.1:99999", "not a host:port address: '127.0.0.1:99999'"),
        (",", "no peers given"),
    ],
)
def test_malformed_peers_is_a_usage_error(tmp_path: Path, peers: str, fragment: str) -> None:
    args = ["server", "--id", "0", "--listen", "127.0.0.1:7001", "--peers", peers]
    result = run_cli(*args, "--data-dir", str(tmp_path / "n0"))
    assert_one_line_error(result, EXIT_USAGE, "kvraft server:", "--peers", fragment)
    assert not (tmp_path / "n0").exists(), "nothing is created for a bad command line"


def test_duplicate_peer_id_is_a_usage_error(tmp_path: Path) -> None:
    peers = "0=127.0.0.1:7001,1=127.0.0.1:7002,1=127.0.0.1:7003"
    result = run_cli(*server_args(tmp_path, peers=peers))
    assert_one_line_error(result, EXIT_USAGE, "--peers: peer id 1 appears twice")


def test_id_not_in_peers_is_a_usage_error(tmp_path: Path) -> None:
    args = server_args(tmp_path)
    args[args.index("--id") + 1] = "7"
    result = run_cli(*args)
    assert_one_line_error(result, EXIT_USAGE, "--id 7 is not one of the ids in --peers (0,1)")


def test_bad_listen_address_is_a_usage_error(tmp_path: Path) -> None:
    args = server_args(tmp_path)
    args[args.index("--listen") + 1] = "localhost"
    result = run_cli(*args)
    assert_one_line_error(result, EXIT_USAGE, "--listen: not a host:port address: 'localhost'")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--max-inflight-proposals", "0"], "--max-inflight-proposals"),
        (["--max-inflight-bytes", "1000"], "--max-inflight-bytes must hold the largest put"),
    ],
)
def test_an_admission_budget_that_admits_nothing_is_a_usage_error(
    tmp_path: Path, flags: list[str], fragment: str
) -> None:
    result = run_cli(*server_args(tmp_path), *flags)
    assert_one_line_error(result, EXIT_USAGE, fragment)


def test_data_dir_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    args = server_args(tmp_path)
    (tmp_path / "n").write_text("not a directory")
    result = run_cli(*args)
    assert_one_line_error(result, EXIT_USAGE, "--data-dir", "is not a directory")


def test_server_without_a_peer_secret_refuses_to_start(tmp_path: Path) -> None:
    """Peer authentication is on by default: no secret and no --insecure-peers is exit 2."""
    result = run_cli(*without_secret(server_args(tmp_path)))
    assert_one_line_error(
        result, EXIT_USAGE, "kvraft server:", "no peer authentication", "--insecure-peers"
    )
    assert not (tmp_path / "n").exists(), "nothing is created for a bad command line"


def test_peer_secret_shorter_than_16_bytes_is_a_usage_error(tmp_path: Path) -> None:
    args = server_args(tmp_path)
    # 15 bytes once stripped (the newline and spaces do not count): one short of the bound.
    (tmp_path / "peer-secret").write_text("  123456789012345\n")
    result = run_cli(*args)
    assert_one_line_error(result, EXIT_USAGE, "--peer-secret-file", "15 bytes", "at least 16")
    assert "123456789012345" not in result.stderr, "the secret is never shown"


def test_missing_peer_secret_file_is_a_usage_error(tmp_path: Path) -> None:
    args = server_args(tmp_path)
    (tmp_path / "peer-secret").unlink()
    result = run_cli(*args)
    assert_one_line_error(result, EXIT_USAGE, "--peer-secret-file", "cannot read")


def test_secret_and_insecure_peers_together_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(*server_args(tmp_path), "--insecure-peers")
    assert_one_line_error(result, EXIT_USAGE, "--insecure-peers excludes")


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-connections", "0"), ("--idle-timeout-s", "0"), ("--frame-timeout-s", "-1")],
)
def test_admission_bounds_below_their_minimum_are_usage_errors(
    tmp_path: Path, flag: str, value: str
) -> None:
    result = run_cli(*server_args(tmp_path), flag, value)
    assert_one_line_error(result, EXIT_USAGE, flag)


@pytest.mark.parametrize("version", ["abc", "1.5", ""])
def test_non_integer_version_is_a_usage_error(version: str) -> None:
    result = run_cli("put", "k", "v", "--version", version, "--servers", closed_address())
    assert_one_line_error(result, EXIT_USAGE, "kvraft put:", "--version", "is not an integer")


def test_negative_version_is_a_usage_error() -> None:
    result = run_cli("put", "k", "v", "--version=-1", "--servers", closed_address())
    assert_one_line_error(result, EXIT_USAGE, "--version", "-1 is not in 0..")


@pytest.mark.parametrize("command", [["get", "k"], ["put", "k", "v"], ["status"]])
def test_malformed_servers_is_a_usage_error(command: list[str]) -> None:
    result = run_cli(*command, "--servers", "127.0.0.1:7001,nope")
    assert_one_line_error(result, EXIT_USAGE, "--servers", "not a host:port address: 'nope'")


def test_malformed_kvraft_servers_variable_is_a_usage_error() -> None:
    result = run_cli("get", "k", env={"KVRAFT_SERVERS": "nope"})
    assert_one_line_error(result, EXIT_USAGE, "--servers", "'nope'")


def test_missing_argument_and_unknown_command_are_usage_errors() -> None:
    assert_one_line_error(run_cli("get"), EXIT_USAGE, "kvraft get:", "KEY")
    assert_one_line_error(run_cli("frobnicate"), EXIT_USAGE, "frobnicate")
    assert_one_line_error(run_cli("server"), EXIT_USAGE, "Missing option")


def test_bench_with_fewer_keys_than_clients_is_a_usage_error() -> None:
    result = run_cli("bench", "--clients", "8", "--keys", "4", "--servers", closed_address())
    assert_one_line_error(result, EXIT_USAGE, "--keys", "4 keys for 8 clients")


def test_cluster_ports_past_65535_are_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("cluster", "--base-port", "65534", "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(result, EXIT_USAGE, "--base-port", "65534..65536")


# -------------------------------------------------- servers that cannot start (exit 1)


def test_port_in_use_ends_with_one_line(tmp_path: Path) -> None:
    args = server_args(tmp_path)
    host, port = args[args.index("--listen") + 1].split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        result = run_cli(*args)
    assert_one_line_error(
        result, EXIT_OP_ERROR, f"cannot listen on 127.0.0.1:{port}", "address already in use"
    )


def _data_dir_of(tmp_path: Path, *, cluster_id: str, node_id: int) -> Path:
    data_dir = tmp_path / "n"
    SqliteStorage.open(data_dir, cluster_id=cluster_id, node_id=node_id).close()
    return data_dir


def test_data_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    _data_dir_of(tmp_path, cluster_id="kvraft", node_id=0)
    result = run_cli(*server_args(tmp_path, node_id=1))
    assert_one_line_error(result, EXIT_OP_ERROR, "belongs to node 0, not node 1")


def test_data_dir_of_another_cluster_is_refused(tmp_path: Path) -> None:
    _data_dir_of(tmp_path, cluster_id="elsewhere", node_id=0)
    result = run_cli(*server_args(tmp_path, node_id=0))
    assert_one_line_error(
        result, EXIT_OP_ERROR, "belongs to cluster 'elsewhere', not cluster 'kvraft'"
    )


# ------------------------------------------------------------- client errors


@pytest.mark.parametrize("command", [["get", "k"], ["put", "k", "v"]])
def test_unreachable_cluster_exits_3_after_the_deadline(command: list[str]) -> None:
    address = closed_address()
    start = time.monotonic()
    result = run_cli(*command, "--deadline", "0.5", env={"KVRAFT_SERVERS": address})
    elapsed = time.monotonic() - start
    assert_one_line_error(result, EXIT_UNAVAILABLE, "cluster unavailable", address, "0.5s")
    assert elapsed >= 0.5, "gave up before the deadline"


def test_status_of_an_unreachable_cluster_shows_it_and_exits_3() -> None:
    address = closed_address()
    result = run_cli("status", "--servers", address, "--timeout", "0.2")
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "Traceback" not in result.stderr
    row = next(line for line in result.stdout.splitlines() if address in line)
    assert "unreachable" in row and "connection refused" in row
    assert "0/1 nodes reachable; no leader" in result.stdout


def test_bench_against_an_unreachable_cluster_exits_3() -> None:
    result = run_cli("bench", "--deadline", "0.3", "--servers", closed_address())
    assert_one_line_error(result, EXIT_UNAVAILABLE, "cluster unavailable")


def test_value_over_the_maximum_is_refused_before_sending() -> None:
    """The client refuses the value itself: no server needed, no wait for a deadline."""
    value = "a" * (DEFAULT_MAX_VALUE_BYTES + 1)
    start = time.monotonic()
    result = run_cli(
        "put", "k", "-", "--deadline", "30", "--servers", closed_address(), input=value
    )
    assert_one_line_error(
        result,
        EXIT_OP_ERROR,
        "InvalidArgument",
        f"{DEFAULT_MAX_VALUE_BYTES + 1} bytes exceeds the maximum of {DEFAULT_MAX_VALUE_BYTES}",
    )
    assert time.monotonic() - start < 10, "it waited on the network"


# --------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ([], "Exit codes: 0 ok, 1 operation error"),
        (["server"], "--peers"),
        (["cluster"], "Ctrl-C"),
        (["get"], "$KVRAFT_SERVERS"),
        (["put"], "--version"),
        (["status"], "--json"),
        (["bench"], "--workload"),
    ],
)
def test_every_command_explains_itself(command: list[str], fragment: str) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert fragment in result.stdout.replace("\n", " ")


def test_cluster_refuses_a_data_dir_of_another_size(tmp_path: Path) -> None:
    """Rerunning a 3-node data dir as 5 nodes would break Raft's agreement on membership."""
    data_dir = tmp_path / "data"
    for i in range(3):
        (data_dir / f"n{i}").mkdir(parents=True)
    result = run_cli("cluster", "--nodes", "5", "--data-dir", str(data_dir))
    assert_one_line_error(
        result, EXIT_USAGE, "--nodes", "holds a 3-node cluster; run it with --nodes 3"
    )
    (data_dir / "cluster.json").write_text('{"nodes": 3}\n')
    result = run_cli("cluster", "--nodes", "1", "--data-dir", str(data_dir))
    assert_one_line_error(result, EXIT_USAGE, "holds a 3-node cluster")


# ---------------------------------------------------------------------- metrics


def test_a_malformed_metrics_address_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(*server_args(tmp_path), "--metrics-listen", "nohostport")
    assert_one_line_error(result, EXIT_USAGE, "--metrics-listen", "'nohostport'")


def test_a_metrics_port_in_use_ends_with_one_line_naming_it(tmp_path: Path) -> None:
    metrics_port = free_base_port(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics_port))
        taken.listen()
        result = run_cli(*server_args(tmp_path), "--metrics-listen", f"127.0.0.1:{metrics_port}")
    assert_one_line_error(
        result, EXIT_OP_ERROR, f"cannot listen on 127.0.0.1:{metrics_port}", "already in use"
    )


def test_cluster_metrics_ports_overlapping_the_nodes_are_a_usage_error(tmp_path: Path) -> None:
    args = ["cluster", "--base-port", "17001", "--metrics-base-port", "17002"]
    result = run_cli(*args, "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(result, EXIT_USAGE, "--metrics-base-port", "overlap")
    assert not (tmp_path / "d").exists(), "nothing is created for a bad command line"
