"""``kvraft member list | add | promote | remove`` and ``kvraft server --join``, as users see them.

Exit codes (kvraft.cli): 0 done, 1 refused or not committed in time, 2 usage,
3 no node answered or none leads; every error is one line on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvraft.client.admin import fetch_statuses
from kvraft.testing.cluster import Cluster
from kvraft.testing.waiting import wait_until
from tests.cli.conftest import assert_one_line_error, free_base_port, has_leader, run_cli

pytestmark = pytest.mark.slow

EXIT_OP_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


def led(cluster: Cluster) -> Cluster:
    """``cluster`` once one of its bootstrap members leads (a CLI call does not wait)."""
    servers = [cluster.address(i) for i in cluster.members]
    wait_until(lambda: has_leader(servers), 20.0, interval_s=0.05, message="a leader")
    return cluster


def member(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    result = run_cli("member", *args, "--servers", ",".join(cluster.addresses))
    return result.returncode, result.stdout, result.stderr


def listed(cluster: Cluster) -> dict[str, object]:
    code, out, err = member(cluster, "list", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


def learner_caught_up(cluster: Cluster, node: int) -> bool:
    document = listed(cluster)
    rows = {row["id"]: row for row in document["members"]}  # type: ignore[attr-defined]
    return node in rows and rows[node]["match_index"] >= document["commit_index"]


def test_list_add_promote_and_remove_print_what_they_did(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The table names each member's role and the leader; each change prints the
    configuration it committed; a learner promoted once caught up, then removed."""
    cluster = led(make_cluster(4, members=[0, 1, 2]))

    code, out, err = member(cluster, "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ROLE", "ADDRESS", "MATCH"]
    assert [line.split()[:2] for line in lines[1:4]] == [[str(i), "voter"] for i in range(3)]
    assert sum("(leader)" in line for line in lines) == 1
    assert lines[-1].startswith("configuration at index 0 (committed); leader last index")

    code, out, err = member(cluster, "add", "3", cluster.address(3), "--learner")
    assert code == 0, err
    assert out.startswith("added n3 as a learner at index ")
    assert out.rstrip().endswith(": voters n0,n1,n2, learners n3")

    cluster.join(3)
    wait_until(lambda: learner_caught_up(cluster, 3), 20.0, message="n3 caught up")
    code, out, err = member(cluster, "promote", "3")
    assert code == 0, err
    assert out.rstrip().endswith(": voters n0,n1,n2,n3, learners none")

    code, out, err = member(cluster, "remove", "3")
    assert code == 0, err
    assert out.startswith("removed n3 at index ")
    assert out.rstrip().endswith(": voters n0,n1,n2, learners none")

    # Its id is retired: a node under it on an empty disk could vote twice in a term.
    code, out, err = member(cluster, "list")
    assert code == 0, err
    assert "retired ids (never to be added again): 3" in out.splitlines()
    assert_one_line_error(
        run_cli("member", "add", "3", cluster.address(3), "--servers", ",".join(cluster.addresses)),
        EXIT_OP_ERROR,
        "member.add refused: n3 was removed from this cluster and its id is retired",
        "give the new node a new id",
    )


def test_refused_changes_exit_1_with_one_line_saying_why(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Promoting a non-member, a lagging learner (with its lag), adding a member twice."""
    cluster = led(make_cluster(4, members=[0, 1, 2], server_args=("--max-promotion-lag", "0")))
    servers = ",".join(cluster.addresses)

    def run(*args: str) -> object:
        return run_cli("member", *args, "--servers", servers)

    assert_one_line_error(run("promote", "7"), EXIT_OP_ERROR, "member.promote refused:", "n7")
    assert run("add", "3", cluster.address(3), "--learner").returncode == 0  # type: ignore[attr-defined]
    assert_one_line_error(
        run("promote", "3"),
        EXIT_OP_ERROR,
        "member.promote refused: n3 is",
        "entries behind the leader (a learner is promoted within 0); let it catch up",
    )
    assert_one_line_error(
        run("add", "3", cluster.address(3), "--learner"), EXIT_OP_ERROR, "member.add refused:"
    )


def test_usage_errors_exit_2() -> None:
    assert_one_line_error(run_cli("member", "add", "3"), EXIT_USAGE, "Missing argument 'ADDRESS'")
    assert_one_line_error(run_cli("member", "promote", "abc"), EXIT_USAGE, "'ID'")
    assert_one_line_error(run_cli("member", "frobnicate"), EXIT_USAGE, "No such command")
    assert_one_line_error(
        run_cli("member", "add", "3", "nohostport"),
        EXIT_USAGE,
        "Invalid value for ADDRESS: not a host:port address: 'nohostport'",
    )


def test_an_unreachable_cluster_exits_3() -> None:
    address = f"127.0.0.1:{free_base_port(1)}"
    for args in (["list"], ["remove", "1"]):
        result = run_cli("member", *args, "--servers", address, "--timeout", "0.3")
        assert_one_line_error(result, EXIT_UNAVAILABLE, "cluster unavailable", address)


def test_join_refuses_a_node_that_was_not_added_first(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--join asks the cluster who its members are (given one follower, it finds the
    leader through it); a node not among them is told the command to run first, and
    its data dir is not created."""
    cluster = led(make_cluster(3))
    assert cluster.peer_secret_file is not None
    follower = next(r for r in fetch_statuses(cluster.addresses, 1.0) if r["role"] == "follower")
    data_dir = tmp_path / "n5"
    result = run_cli(
        "server", "--id", "5", "--listen", f"127.0.0.1:{free_base_port(1)}",
        "--join", follower["address"], "--data-dir", str(data_dir),
        "--cluster-id", cluster.cluster_id, "--peer-secret-file", str(cluster.peer_secret_file),
    )  # fmt: skip
    assert_one_line_error(
        result,
        EXIT_OP_ERROR,
        f"n5: not a member of the cluster at {follower['address']} (n0,n1,n2)",
        "run `kvraft member add 5 ADDRESS --learner` first",
    )
    assert not data_dir.exists()


def test_join_of_an_unreachable_cluster_and_no_peers_at_all(tmp_path: Path) -> None:
    secret = tmp_path / "peer-secret"
    secret.write_text("a-test-secret-of-enough-bytes\n")
    base = ["server", "--id", "5", "--listen", f"127.0.0.1:{free_base_port(1)}",
            "--data-dir", str(tmp_path / "n5"), "--peer-secret-file", str(secret)]  # fmt: skip
    closed = f"127.0.0.1:{free_base_port(1)}"

    assert_one_line_error(
        run_cli(*base, "--join", closed), EXIT_OP_ERROR, f"--join {closed}: cannot list the members"
    )
    assert_one_line_error(run_cli(*base), EXIT_USAGE, "--peers is required (or --join")
