"""The sans-I/O boundary of the consensus core, checked on its source."""

from __future__ import annotations

import ast
from pathlib import Path

import kvraft.raft

RAFT_DIR = Path(kvraft.raft.__file__).parent
# No clock, files, sockets, threads, event loop or database in the core (STYLE.md lesson 1).
FORBIDDEN = {
    "asyncio",
    "socket",
    "time",
    "os",
    "sqlite3",
    "threading",
    "subprocess",
    "selectors",
    "datetime",
    "uvloop",
}


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def global_random_calls(tree: ast.AST) -> list[str]:
    """Uses of the module-level random generator (``random.random()``, ...)."""
    return [
        f"random.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "random"
        and node.attr != "Random"
    ]


def test_raft_core_imports_no_io() -> None:
    """kvraft/raft/*.py import no module that does I/O or reads the clock.

    Reference: STYLE.md lesson 1, DESIGN.md (RaftCore is sans-I/O)
    """
    sources = sorted(RAFT_DIR.glob("*.py"))
    assert len(sources) >= 8

    offenders = {
        path.name: sorted(imported_modules(ast.parse(path.read_text())) & FORBIDDEN)
        for path in sources
    }

    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_raft_core_uses_no_global_random() -> None:
    """Randomness comes only from the config's random.Random, so runs replay exactly.

    Reference: STYLE.md lesson 1
    """
    offenders = {
        path.name: global_random_calls(ast.parse(path.read_text()))
        for path in sorted(RAFT_DIR.glob("*.py"))
    }

    assert {name: calls for name, calls in offenders.items() if calls} == {}


def test_boundary_check_catches_an_offender() -> None:
    """The checks above do flag what they look for.

    Reference: STYLE.md lesson 1
    """
    tree = ast.parse("import os.path\nfrom time import monotonic\nimport random\nrandom.random()")

    assert imported_modules(tree) & FORBIDDEN == {"os", "time"}
    assert global_random_calls(tree) == ["random.random"]
