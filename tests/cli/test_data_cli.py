"""``kvraft set``, ``del``, ``get --prefix`` and ``txn`` against a running ``kvraft cluster``."""

from __future__ import annotations

import json

import pytest

from kvraft.cli_common import EXIT_OP_ERROR, EXIT_USAGE

from .conftest import CliCluster, assert_one_line_error, run_cli

pytestmark = pytest.mark.slow


def test_set_get_prefix_and_del(shared_cli_cluster: CliCluster) -> None:
    env = shared_cli_cluster.env
    for key, value in (("fruit/apple", "red"), ("fruit/kiwi", "green"), ("fruitless", "no")):
        done = run_cli("set", key, value, env=env)
        assert (done.returncode, done.stdout) == (0, "ok\t(version 1)\n"), done.stderr
    assert run_cli("set", "fruit/apple", "green", env=env).stdout == "ok\t(version 2)\n"
    listed = run_cli("get", "--prefix", "fruit/", env=env)
    assert listed.stdout == "fruit/apple\tgreen\t(version 2)\nfruit/kiwi\tgreen\t(version 1)\n"
    keys = run_cli("get", "--prefix", "fruit/", "--keys-only", "--limit", "1", env=env)
    assert keys.stdout == "fruit/apple\t(version 2)\n", keys.stderr
    as_json = json.loads(run_cli("get", "--prefix", "fruit", "--json", env=env).stdout)
    assert [kv["key"] for kv in as_json["kvs"]] == ["fruit/apple", "fruit/kiwi", "fruitless"]
    assert as_json["kvs"][0]["create_revision"] >= 1 and as_json["more"] is False

    stale = run_cli("del", "fruit/apple", "--version", "1", env=env)
    assert_one_line_error(stale, EXIT_OP_ERROR, "VersionMismatch")
    assert run_cli("del", "fruit/apple", "--version", "2", env=env).stdout == "deleted 1\n"
    assert_one_line_error(run_cli("get", "fruit/apple", env=env), EXIT_OP_ERROR, "NoKey")
    assert run_cli("del", "fruitless", env=env).stdout == "deleted 1\n"
    assert run_cli("del", "fruitless", env=env).stdout == "deleted 0\n"
    assert run_cli("del", "--prefix", "fruit/", env=env).stdout == "deleted 1\n"
    assert run_cli("get", "--prefix", "fruit", env=env).stdout == ""


def test_txn_from_json_on_stdin(shared_cli_cluster: CliCluster) -> None:
    env = shared_cli_cluster.env
    create = {
        "compare": [{"key": "job/1", "target": "exists", "op": "==", "value": False}],
        "success": [{"op": "set", "key": "job/1", "value": "mine"}],
        "failure": [{"op": "get", "key": "job/1"}],
    }
    first = run_cli("txn", env=env, input=json.dumps(create))
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["succeeded"] is True and answer["responses"][0]["type"] == "SetOk"
    second = json.loads(run_cli("txn", env=env, input=json.dumps(create)).stdout)
    assert second["succeeded"] is False
    assert second["responses"][0]["kvs"][0]["value"] == "mine"
    ranged = {"success": [{"op": "range", "prefix": "job/", "keys_only": True}]}
    third = json.loads(run_cli("txn", env=env, input=json.dumps(ranged)).stdout)
    assert third["responses"][0]["kvs"][0] == {
        "key": "job/1",
        "value": "",
        "version": 1,
        "create_revision": answer["revision"],
        "mod_revision": answer["revision"],
        "lease": 0,
    }
    # a versioned op that does not match: exit 1, nothing applied
    bad = {"success": [{"op": "set", "key": "job/2", "value": "x"},
                       {"op": "put", "key": "job/1", "value": "y", "version": 7}]}  # fmt: skip
    failed = run_cli("txn", env=env, input=json.dumps(bad))
    assert_one_line_error(failed, EXIT_OP_ERROR, "VersionMismatch", "success[1]")
    assert_one_line_error(run_cli("get", "job/2", env=env), EXIT_OP_ERROR, "NoKey")


@pytest.mark.parametrize(
    ("args", "stdin", "fragment"),
    [
        (["get"], None, "KEY or --prefix"),
        (["get", "k", "--prefix", "p"], None, "KEY or --prefix"),
        (["get", "k", "--limit", "2"], None, "--prefix"),
        (["del"], None, "KEY or --prefix"),
        (["del", "--prefix", "p", "--version", "1"], None, "--version"),
        (["del", "k", "--version", "x"], None, "not an integer"),
        (["txn"], "{", "not JSON"),
        (["txn"], "[]", "JSON object"),
        (["txn"], '{"success": [{"op": "cas"}]}', "op one of"),
        (["txn"], '{"success": [{"op": "get"}]}', "missing"),
        (["txn"], '{"success": [{"op": "get", "key": "k", "colour": 1}]}', "unknown"),
        (["txn"], '{"compare": [{"key": "k"}]}', "compare[0]"),
        (["txn"], '{"extra": []}', "unknown field"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    args: list[str], stdin: str | None, fragment: str
) -> None:
    """Refused before any connection: no cluster needed (the default servers are not up)."""
    result = run_cli(*args, "--servers", "127.0.0.1:1", input=stdin)
    assert_one_line_error(result, EXIT_USAGE, fragment)


def test_a_txn_with_bad_fields_is_refused_by_the_client(shared_cli_cluster: CliCluster) -> None:
    bad = '{"compare": [{"key": "k", "target": "size", "op": "==", "value": 1}]}'
    result = run_cli("txn", env=shared_cli_cluster.env, input=bad)
    assert_one_line_error(result, EXIT_OP_ERROR, "InvalidArgument", "target")
