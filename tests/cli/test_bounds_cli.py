"""Bad option combinations are usage errors (exit 2) and a data dir the server cannot load
is a one-line refusal (exit 1), never a traceback at every restart.

Reference: issue 11 item 3; DESIGN 1.3 (errors a user can cause end with one line)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kvraft.raft.ready import HardState, Snapshot
from kvraft.storage.sqlite import SqliteStorage
from tests.cli.conftest import assert_one_line_error, run_cli
from tests.cli.test_user_errors import EXIT_OP_ERROR, EXIT_USAGE, server_args


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (
            ["--election-ticks", "5", "--heartbeat-ticks", "5"],
            ["--heartbeat-ticks 5 must be less than --election-ticks 5"],
        ),
        (
            ["--election-ticks", "5", "--heartbeat-ticks", "9"],
            ["--heartbeat-ticks 9 must be less than --election-ticks 5"],
        ),
        (
            ["--max-frame-bytes", "65536"],
            ["--max-value-bytes 1048576 must leave 4096 bytes", "--max-frame-bytes 65536"],
        ),
        (
            ["--max-frame-bytes", "8192", "--max-value-bytes", "4097"],
            ["--max-value-bytes 4097 must leave 4096 bytes"],
        ),
    ],
)
def test_an_invalid_combination_of_options_is_a_usage_error(
    tmp_path: Path, flags: list[str], fragments: list[str]
) -> None:
    result = run_cli(*server_args(tmp_path), *flags)

    assert_one_line_error(result, EXIT_USAGE, "kvraft server:", *fragments)
    assert not (tmp_path / "n").exists(), "nothing is created for a bad command line"


def test_heartbeat_one_below_the_election_timeout_is_accepted(tmp_path: Path) -> None:
    """The edge that passes: the same command with --heartbeat-ticks 4 < 5 gets past the
    option checks (it then fails later, on purpose, on a data dir of another node)."""
    SqliteStorage.open(tmp_path / "n", cluster_id="kvraft", node_id=1).close()
    result = run_cli(*server_args(tmp_path), "--election-ticks", "5", "--heartbeat-ticks", "4")

    assert_one_line_error(result, EXIT_OP_ERROR, "belongs to node 1, not node 0")


def test_a_stored_snapshot_that_does_not_decode_is_refused_with_one_line(
    tmp_path: Path,
) -> None:
    """The snapshot file's CRC is right (storage wrote it), but the KV state machine cannot
    restore it: the server refuses the data dir, exit 1, and refuses it again on restart."""
    store = SqliteStorage.open(tmp_path / "n", cluster_id="kvraft", node_id=0)
    store.save(HardState(current_term=2, commit_index=5), [], Snapshot(5, 2, b"not a snapshot"))
    store.close()

    for _ in range(2):
        result = run_cli(*server_args(tmp_path))
        assert_one_line_error(result, EXIT_OP_ERROR, "raft.db: cannot load:", "snapshot")


def test_a_stored_term_past_the_bound_is_refused_with_one_line(tmp_path: Path) -> None:
    SqliteStorage.open(tmp_path / "n", cluster_id="kvraft", node_id=0).close()
    with sqlite3.connect(tmp_path / "n" / "raft.db") as conn:
        conn.execute("UPDATE hard_state SET current_term = ?", (2**63 - 1,))
    conn.close()

    result = run_cli(*server_args(tmp_path))

    assert_one_line_error(
        result, EXIT_OP_ERROR, "current_term", "past the bound 4611686018427387904"
    )
