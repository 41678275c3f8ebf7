"""The layering of ``src/kvraft`` holds in every import, not only in the code's shape.

The layer table lives in one place, the docstring of ``src/kvraft/__init__.py``
(numbered lines, bottom up); these tests read it from the source, map every
module under ``src/kvraft`` to its layer, and fail on any import of a higher
layer: every ``import``/``from`` statement counts, those inside functions and
``TYPE_CHECKING`` blocks included, since a lazy import is still a dependency.
``docs/architecture.md`` must show the same table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import kvraft

PACKAGE_DIR = Path(kvraft.__file__).parent
ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"

# "3. ``kv_protocol``: ..." or "10. ``status_table``, ``bench``: ..."
# (a row's names may wrap onto the next line)
_ROW = re.compile(r"^(\d+)\. ((?:``\w+``(?:,\s+)?)+):", re.MULTILINE)
_NAME = re.compile(r"``(\w+)``")


def layer_table(docstring: str) -> list[list[str]]:
    """The layers of a docstring's numbered table, bottom up; each a list of top-level names."""
    rows = [(int(number), _NAME.findall(names)) for number, names in _ROW.findall(docstring)]
    assert [number for number, _ in rows] == list(range(1, len(rows) + 1)), rows
    return [names for _, names in rows]


def package_docstring() -> str:
    docstring = ast.get_docstring(ast.parse((PACKAGE_DIR / "__init__.py").read_text()))
    assert docstring is not None
    return docstring


LAYERS = layer_table(package_docstring())
RANK = {name: rank for rank, names in enumerate(LAYERS, start=1) for name in names}


def module_name(path: Path) -> str:
    """``src/kvraft/rpc/codec.py`` -> ``kvraft.rpc.codec``; a package is its ``__init__``."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level(module: str) -> str:
    """The name in the table a kvraft module falls under (``__init__`` for ``kvraft``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def kvraft_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every kvraft module that ``module``'s source imports, wherever the statement is."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: ``from ..server import commands``
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # ``from kvraft import errors`` imports a module; ``from kvraft import NoKey``
                # imports kvraft itself.
                submodule = f"{base}.{alias.name}"
                found.add(submodule if is_module(submodule) else base)
    return {name for name in found if name == "kvraft" or name.startswith("kvraft.")}


def is_module(name: str) -> bool:
    """Whether ``name`` is a module or package under src/kvraft (not a name inside one)."""
    path = PACKAGE_DIR.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def wrong_way_imports(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """``"importer -> imported (layer i below layer j)"`` for every import of a higher layer."""
    problems = []
    for module, (text, is_package) in sorted(sources.items()):
        own = RANK[top_level(module)]
        for target in sorted(kvraft_imports(ast.parse(text), module, is_package)):
            theirs = RANK.get(top_level(target))
            if theirs is None:
                problems.append(f"{module} -> {target} (not in the layer table)")
            elif theirs > own:
                problems.append(f"{module} -> {target} (layer {own} imports layer {theirs})")
    return problems


def shipped_sources() -> dict[str, tuple[str, bool]]:
    return {
        module_name(path): (path.read_text(), path.name == "__init__.py")
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
    }


def test_every_module_is_in_exactly_one_layer() -> None:
    """A new top-level module or package must be placed in the table; no name twice."""
    names = [name for layer in LAYERS for name in layer]
    assert len(names) == len(set(names))
    present = {top_level(module) for module in shipped_sources()}
    assert present == set(names)


def test_no_module_imports_a_higher_layer() -> None:
    """Every import in src/kvraft runs downwards or within its own layer."""
    assert wrong_way_imports(shipped_sources()) == []


def test_the_table_puts_the_boundaries_where_the_design_does() -> None:
    """The claims the table exists for: core below rpc, client not on server, testing on top."""
    assert RANK["errors"] < RANK["raft"] < RANK["rpc"] < RANK["server"]
    assert RANK["kv_protocol"] < RANK["rpc"] < RANK["client"] < RANK["server"]
    assert RANK["storage"] < RANK["server"] < RANK["__init__"]
    command_line = {
        "cli",
        "cli_servers",
        "cli_clients",
        "cli_admin",
        "cli_backup",
        "cli_common",
        "cli_leases",
        "__main__",
    }
    shipped = set(RANK) - {"testing"} - command_line
    assert all(RANK[name] < RANK["testing"] < RANK[cli] for name in shipped for cli in command_line)


def test_the_check_catches_imports_that_run_the_wrong_way() -> None:
    """Lazy, TYPE_CHECKING, relative and package-level imports all count."""
    sources = {
        "kvraft.client.bad": ("def f():\n    from kvraft.server.node import RaftNode\n", False),
        "kvraft.raft.bad": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kvraft.rpc.codec\n",
            False,
        ),
        "kvraft.rpc.bad": ("from ..server import commands\nfrom . import codec\n", False),
        "kvraft.server.bad": ("from kvraft import NoKey\nfrom kvraft import errors\n", False),
        "kvraft.bench": ("from kvraft.testing.faults import LOSSY\n", False),
        "kvraft.cli": ("from kvraft.testing.faults import LOSSY\nimport kvraft.nowhere\n", False),
    }

    assert wrong_way_imports(sources) == [
        f"kvraft.bench -> kvraft.testing.faults (layer {RANK['bench']} imports layer"
        f" {RANK['testing']})",
        "kvraft.cli -> kvraft.nowhere (not in the layer table)",
        f"kvraft.client.bad -> kvraft.server.node (layer {RANK['client']} imports layer"
        f" {RANK['server']})",
        f"kvraft.raft.bad -> kvraft.rpc.codec (layer {RANK['raft']} imports layer {RANK['rpc']})",
        f"kvraft.rpc.bad -> kvraft.server.commands (layer {RANK['rpc']} imports layer"
        f" {RANK['server']})",
        f"kvraft.server.bad -> kvraft (layer {RANK['server']} imports layer {RANK['__init__']})",
    ]


def test_the_architecture_document_shows_the_same_layers() -> None:
    """docs/architecture.md mirrors the table: same layers, same modules, same order."""
    text = ARCHITECTURE.read_text()
    rows = re.findall(r"^\| (\d+) \| ((?:`\w+`(?:, )?)+) \|", text, re.MULTILINE)
    documented = [re.findall(r"`(\w+)`", names) for _, names in rows]
    assert [int(number) for number, _ in rows] == list(range(1, len(rows) + 1))
    assert documented == LAYERS
