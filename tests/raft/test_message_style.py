"""Raft messages are built with named fields, checked on the source of the whole repository.

``AppendEntries(1, 2, 3, 2, 1, new, 0)`` cannot be read without the class
open; ``AppendEntries(src=1, dst=2, term=3, prev_log_index=2, ...)`` can. The
message classes are not ``kw_only`` dataclasses because the codec builds them
from a decoded tuple of fields, positionally: keywords there would cost about
half a microsecond per log entry on the hottest decoding path. So the rule is
checked here instead, on every construction outside the codec.
"""

from __future__ import annotations

import ast
from pathlib import Path

from kvraft.raft.messages import MESSAGE_TYPES, Entry

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("src", "tests", "benchmarks")
MESSAGE_NAMES = frozenset(cls.__name__ for cls in (Entry, *MESSAGE_TYPES))


def positional_constructions(tree: ast.AST) -> list[str]:
    """``Name(positional, ...)`` calls of a message class, as ``Name@line``."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name in MESSAGE_NAMES:
            found.append(f"{name}@{node.lineno}")
    return found


def test_raft_messages_are_built_with_keyword_arguments() -> None:
    """No construction of a Raft message (or log entry) passes a field by position."""
    sources = sorted(path for top in SCANNED for path in (REPO / top).rglob("*.py"))
    assert len(sources) > 50

    offenders = {
        str(path.relative_to(REPO)): found
        for path in sources
        if (found := positional_constructions(ast.parse(path.read_text(encoding="utf-8"))))
    }

    assert offenders == {}


def test_the_check_catches_a_positional_construction() -> None:
    """The check flags positional fields, plain or through the module, and nothing else."""
    tree = ast.parse(
        "RequestVote(1, 2, 3, 0, 0, False)\n"
        "messages.Entry(1, 1, None)\n"
        "Entry(term=1, index=1, command=None)\n"
        "cls(*values)\n"
    )

    assert positional_constructions(tree) == ["RequestVote@1", "Entry@2"]
