"""The ``kvraft status`` table and summary line, from status rows."""

from __future__ import annotations

from typing import Any

from kvraft.status_table import format_status_table, short_reason, status_summary


def node(i: int, role: str, leader: int | None, term: int = 3) -> dict[str, Any]:
    return {"id": i, "address": f"127.0.0.1:{7001 + i}", "reachable": True, "role": role,
            "term": term, "commit_index": 10, "applied_index": 9, "log_length": 4,
            "snapshot_index": 6, "leader_id": leader}  # fmt: skip


def down(port: int) -> dict[str, Any]:
    return {"address": f"127.0.0.1:{port}", "reachable": False, "error": "connection refused"}


def test_table_has_a_column_per_field_and_unreachable_rows_say_why() -> None:
    text = format_status_table([node(0, "leader", 0), down(7002), node(2, "follower", None)])
    header, n0, n1, n2 = text.splitlines()
    assert header.split() == [
        "id", "address", "role", "term", "commit", "applied", "log", "snapshot", "leader",
    ]  # fmt: skip
    assert n0.split() == ["0", "127.0.0.1:7001", "leader", "3", "10", "9", "4", "6", "n0"]
    assert n1.split() == ["-", "127.0.0.1:7002", "unreachable", "(connection", "refused)"]
    assert n2.split()[-1] == "-", "a node that knows no leader shows '-'"
    # the reason does not widen the term column
    assert "term  commit" in header and n0[header.index("term")] == "3"


def test_summary_names_the_leader_or_who_followers_follow() -> None:
    assert status_summary([node(0, "leader", 0), node(1, "follower", 0)]) == (
        "2/2 nodes reachable; leader n0 in term 3"
    )
    assert status_summary([node(1, "follower", 0), down(7001)]) == (
        "1/2 nodes reachable; no leader among them (they name n0)"
    )
    assert status_summary([down(7001)]) == "0/1 nodes reachable; no leader"
    # two leaders (an old one not yet deposed): the one of the highest term
    rows = [node(0, "leader", 0, term=3), node(1, "leader", 1, term=4)]
    assert status_summary(rows) == "2/2 nodes reachable; leader n1 in term 4"


def test_short_reasons() -> None:
    refused = "cannot connect to 127.0.0.1:1: [Errno 111] Connect call failed ('127.0.0.1', 1)"
    assert short_reason(refused) == "connection refused"
    assert short_reason("status to 127.0.0.1:1: no reply in time") == "timed out"
    assert short_reason("something\nelse") == "something else"


def test_a_node_that_refused_our_token_is_shown_as_refused_not_unreachable() -> None:
    error = "Unauthorized: status needs the admin role; this token has read"
    refused = {"address": "127.0.0.1:7002", "reachable": False, "refused": True, "error": error}
    _, row = format_status_table([refused]).splitlines()
    assert row.split()[:4] == ["-", "127.0.0.1:7002", "refused", "(Unauthorized:"]
