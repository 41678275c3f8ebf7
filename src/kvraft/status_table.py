"""``kvraft status`` as text: a table of the nodes' states and a one-line summary.

Pure functions over the rows :func:`kvraft.client.admin.fetch_statuses` returns
(one dict per node, ``reachable`` False with an ``error`` for a node that did
not answer), so the layout is tested without a cluster.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

from kvraft.errors import one_line


def short_reason(error: str) -> str:
    """Why a node did not answer, in a few words."""
    lowered = error.lower()
    if "refused" in lowered or f"[errno {errno.ECONNREFUSED}]" in lowered:
        return "connection refused"
    if "no reply" in lowered or "timed out" in lowered or "no connection" in lowered:
        return "timed out"
    return one_line(error)


STATUS_COLUMNS = [
    ("id", "id"),
    ("address", "address"),
    ("role", "role"),
    ("term", "term"),
    ("commit", "commit_index"),
    ("applied", "applied_index"),
    ("log", "log_length"),
    ("snapshot", "snapshot_index"),
    ("leader", "leader_id"),
]


def format_status_table(rows: Sequence[dict[str, Any]]) -> str:
    """A text table, one node a line; an unreachable node shows why instead of its state."""
    header = [name for name, _ in STATUS_COLUMNS]
    table: list[list[str]] = []
    for row in rows:
        if not row.get("reachable"):
            reason = row.get("error") or "no answer"
            # A node that answered with a refusal is reachable, just not to us.
            state = "refused" if row.get("refused") else "unreachable"
            table.append(["-", str(row["address"]), state, f"({reason})"])
            continue
        cells = []
        for _, field in STATUS_COLUMNS:
            value = row.get(field)
            if field == "leader_id":
                value = "-" if value is None else f"n{value}"
            cells.append("" if value is None else str(value))
        table.append(cells)
    # An unreachable row's reason runs on past the columns it would widen.
    widths = [
        max(len(r[i]) for r in [header, *table] if i < 3 or len(r) == len(header))
        for i in range(len(header))
    ]
    lines = []
    for r in [header, *table]:
        if len(r) == len(header):
            cells = [c.ljust(w) for c, w in zip(r, widths, strict=True)]
        else:  # unreachable: id, address, role, then the reason
            cells = [c.ljust(w) for c, w in zip(r[:3], widths, strict=False)] + [r[3]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def status_summary(rows: Sequence[dict[str, Any]]) -> str:
    """One line: how many nodes answered and who leads."""
    reachable = [r for r in rows if r.get("reachable")]
    text = f"{len(reachable)}/{len(rows)} nodes reachable"
    leaders = [r for r in reachable if r.get("role") == "leader"]
    if leaders:
        top = max(leaders, key=lambda r: r["term"])
        return f"{text}; leader n{top['id']} in term {top['term']}"
    named = sorted({r["leader_id"] for r in reachable if r.get("leader_id") is not None})
    if named:
        return f"{text}; no leader among them (they name {', '.join(f'n{i}' for i in named)})"
    return f"{text}; no leader"
