"""`kvraft lease grant|keepalive|revoke|ttl`, `set --lease` and `kvraft lock` from a shell."""

from __future__ import annotations

import json

import pytest

from kvraft.cli_common import EXIT_OP_ERROR, EXIT_USAGE
from kvraft.lease_protocol import MAX_LEASE_ID, MAX_LEASE_TTL_S, MIN_LEASE_TTL_S

from .conftest import KVRAFT, CliCluster, assert_one_line_error, run_cli

pytestmark = pytest.mark.slow


def test_grant_attach_keepalive_ttl_and_revoke(shared_cli_cluster: CliCluster) -> None:
    env = shared_cli_cluster.env
    granted = run_cli("lease", "grant", "60", env=env)
    assert granted.returncode == 0, granted.stderr
    lease_id, rest = granted.stdout.rstrip("\n").split("\t")
    assert rest == "(ttl 60)" and int(lease_id) > 0

    assert run_cli("set", "svc/a", "10.0.0.1", "--lease", lease_id, env=env).returncode == 0
    listed = json.loads(run_cli("get", "--prefix", "svc/", "--json", env=env).stdout)
    assert listed["kvs"][0]["lease"] == int(lease_id)

    kept = run_cli("lease", "keepalive", lease_id, "--once", env=env)
    assert kept.stdout == f"{lease_id}\tkept alive\t(ttl 60)\n", kept.stderr
    ttl = run_cli("lease", "ttl", lease_id, "--keys", env=env)
    first, keys = ttl.stdout.splitlines()[0], ttl.stdout.splitlines()[1:]
    head, granted_ttl, remaining = first.split("\t")
    assert (head, granted_ttl, keys) == (lease_id, "granted 60", ["svc/a"])
    assert 50.0 <= float(remaining.removeprefix("remaining ")) <= 60.0
    as_json = json.loads(run_cli("lease", "ttl", lease_id, "--json", env=env).stdout)
    assert as_json["granted_ttl"] == 60

    revoked = run_cli("lease", "revoke", lease_id, env=env)
    assert revoked.stdout == f"revoked {lease_id}\t(deleted 1)\n", revoked.stderr
    assert_one_line_error(run_cli("get", "svc/a", env=env), EXIT_OP_ERROR, "NoKey")
    for gone in (["ttl", lease_id], ["keepalive", lease_id, "--once"], ["revoke", lease_id]):
        assert_one_line_error(run_cli("lease", *gone, env=env), EXIT_OP_ERROR, "LeaseNotFound")
    attach = run_cli("set", "svc/b", "x", "--lease", lease_id, env=env)
    assert_one_line_error(attach, EXIT_OP_ERROR, "LeaseNotFound")


def test_grant_takes_the_ttl_bounds_and_json(shared_cli_cluster: CliCluster) -> None:
    env = shared_cli_cluster.env
    for ttl in (MIN_LEASE_TTL_S, MAX_LEASE_TTL_S):
        done = run_cli("lease", "grant", str(ttl), "--json", env=env)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["ttl"] == ttl
        assert run_cli("lease", "revoke", str(answer["id"]), env=env).returncode == 0


def test_lock_runs_the_command_holding_the_lock_and_exits_with_its_status(
    shared_cli_cluster: CliCluster,
) -> None:
    env = shared_cli_cluster.env
    script = 'echo "token=$KVRAFT_LOCK_TOKEN"; exit 3'
    first = run_cli("lock", "nightly", "--ttl", "5", "--", "sh", "-c", script, env=env)
    assert first.returncode == 3, first.stderr
    token = int(first.stdout.strip().removeprefix("token="))
    # The command saw the lock held; released afterwards: the next run takes it at once
    # with a larger token.
    inside = run_cli("lock", "nightly", "--", *KVRAFT, "get", "--prefix", "__lock__/", env=env)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.count("__lock__/nightly/") == 1
    second = run_cli("lock", "nightly", "--", "sh", "-c", script, env=env)
    assert second.returncode == 3
    assert int(second.stdout.strip().removeprefix("token=")) > token
    assert run_cli("get", "--prefix", "__lock__/nightly/", env=env).stdout == ""
    missing = run_cli("lock", "nightly", "--", "/nonexistent/command", env=env)
    assert missing.returncode == 127
    assert "cannot run '/nonexistent/command'" in missing.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["lease", "grant", str(MIN_LEASE_TTL_S - 1)], f"{MIN_LEASE_TTL_S}..{MAX_LEASE_TTL_S}"),
        (["lease", "grant", str(MAX_LEASE_TTL_S + 1)], f"{MIN_LEASE_TTL_S}..{MAX_LEASE_TTL_S}"),
        (["lease", "grant", "soon"], "not a whole number of seconds"),
        (["lease", "ttl", "x1"], "not a lease id"),
        (["lease", "revoke", "0"], f"1..{MAX_LEASE_ID}"),
        (["lease", "keepalive", str(MAX_LEASE_ID + 1)], f"1..{MAX_LEASE_ID}"),
        (["set", "k", "v", "--lease", "seven"], "not a lease id"),
        (["set", "k", "v", "--lease", "-1"], f"0..{MAX_LEASE_ID}"),
        (["lock", "nightly"], "COMMAND"),
        (["lock", "nightly", "--ttl", "1", "--", "true"], f"{MIN_LEASE_TTL_S}.."),
    ],
)
def test_bad_lease_input_is_one_line_and_a_usage_exit(
    shared_cli_cluster: CliCluster, args: list[str], fragment: str
) -> None:
    assert_one_line_error(run_cli(*args, env=shared_cli_cluster.env), EXIT_USAGE, fragment)
