"""The sans-I/O boundary of the consensus core: its import closure, and its source.

A boundary is its import closure: a check of the direct ``import`` lines of
``raft/*.py`` once missed that ``raft/messages.py`` pulled in the codec, the
transport, ``asyncio`` and ``socket``. So the first test imports every module
of ``kvraft.raft`` in a fresh interpreter and looks at what ``sys.modules``
holds afterwards; the others read the source for what a closure cannot show
(a direct use of a module the interpreter loads anyway, global randomness).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kvraft
import kvraft.raft

RAFT_DIR = Path(kvraft.raft.__file__).parent
SRC_DIR = Path(kvraft.__file__).parent.parent
RAFT_MODULES = sorted(
    "kvraft.raft" if path.stem == "__init__" else f"kvraft.raft.{path.stem}"
    for path in RAFT_DIR.glob("*.py")
)

# What importing the core may load besides kvraft.raft itself, by top-level
# name (``re`` covers ``re._parser``). Each entry does no I/O when imported.
PURE_STDLIB = {
    # the language's own machinery and data structures
    "__future__", "abc", "ast", "bisect", "collections", "contextlib", "copy",
    "copyreg", "dataclasses", "dis", "enum", "functools", "heapq", "importlib",
    "inspect", "itertools", "keyword", "math", "opcode", "operator", "random",
    "re", "reprlib", "string", "textwrap", "token", "tokenize", "types",
    "typing", "warnings", "weakref", "annotationlib",
    # their C halves (names vary by Python version)
    "_abc", "_ast", "_bisect", "_collections", "_collections_abc", "_functools",
    "_heapq", "_opcode", "_opcode_metadata", "_operator", "_random", "_sha2",
    "_sha512", "_sre", "_string", "_struct", "_tokenize", "_typing",
    "_weakrefset", "_colorize",
    # logging (the core's operator log lines) and what it brings: source lines
    # for tracebacks, and an exit hook that flushes handlers
    "logging", "traceback", "linecache", "atexit",
    # zlib.crc32, the InstallSnapshot checksum: arithmetic on bytes, no I/O
    "zlib",
}  # fmt: skip
# Loaded on the way, never used by the core (test_raft_core_imports_no_io
# forbids importing them): ``os`` by ``random`` (seeding from urandom),
# ``inspect`` and ``logging``; ``threading`` by ``logging`` for its handler
# locks (the core starts no thread and takes no lock).
LOADED_ALONG = {"os", "posixpath", "genericpath", "stat", "_stat", "threading"}
# kvraft's own __init__ runs before any subpackage; it imports kvraft.errors,
# which imports nothing.
KVRAFT_ALLOWED = {"kvraft", "kvraft.errors"}

CLOSURE_SCRIPT = """
import sys
sys.path[:0] = sys.argv[1].split("\\n")
before = set(sys.modules)
for name in sys.argv[2:]:
    __import__(name)
print(sorted(set(sys.modules) - before))
"""

# No clock, files, sockets, threads, event loop or database in the core.
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
    "msgpack",
}


def loaded_by_importing(modules: list[str]) -> list[str]:
    """The modules a fresh interpreter loads to import ``modules``.

    ``-S`` skips ``site``, so nothing but the interpreter's own start-up
    modules is loaded before; this process's path is handed over instead, so
    an offender (msgpack, the transport) is imported and listed, not missed.
    """
    path = "\n".join([str(SRC_DIR), *(entry for entry in sys.path if entry)])
    result = subprocess.run(
        [sys.executable, "-S", "-c", CLOSURE_SCRIPT, path, *modules],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = ast.literal_eval(result.stdout.strip())
    return loaded


def outside_the_core(loaded: list[str]) -> list[str]:
    """The loaded modules that are neither the core, nor allowed, nor pure stdlib."""
    return [
        name
        for name in loaded
        if name != "kvraft.raft"
        and not name.startswith("kvraft.raft.")
        and name not in KVRAFT_ALLOWED
        and name.split(".")[0] not in PURE_STDLIB | LOADED_ALONG
    ]


def test_importing_the_core_loads_nothing_outside_it() -> None:
    """Importing every kvraft.raft module loads only the core and pure standard modules.

    No msgpack, codec, transport, asyncio, sockets, selectors, ssl, sqlite3 or
    subprocess: the core's wire registration lives in ``kvraft.rpc.wire_types``.

    Reference: the raft package docstring (a boundary is its import closure)
    """
    assert len(RAFT_MODULES) >= 8
    loaded = loaded_by_importing(RAFT_MODULES)

    assert set(RAFT_MODULES) <= set(loaded)
    assert outside_the_core(loaded) == []


def test_closure_check_catches_an_offender() -> None:
    """The closure check does flag a module that loads the codec.

    Reference: the raft package docstring (a boundary is its import closure)
    """
    loaded = loaded_by_importing(["kvraft.raft.messages", "json"])

    assert "json" in outside_the_core(loaded)
    assert outside_the_core(["kvraft.rpc.codec", "msgpack", "asyncio", "os", "kvraft"]) == [
        "kvraft.rpc.codec",
        "msgpack",
        "asyncio",
    ]


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

    Some of these (``os``, ``time``) the interpreter loads anyway, so the
    closure test cannot see a direct use of them; the source can.

    Reference: the raft package docstring (RaftCore is sans-I/O)
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

    Reference: the raft package docstring (sans-I/O)
    """
    offenders = {
        path.name: global_random_calls(ast.parse(path.read_text()))
        for path in sorted(RAFT_DIR.glob("*.py"))
    }

    assert {name: calls for name, calls in offenders.items() if calls} == {}


def test_boundary_check_catches_an_offender() -> None:
    """The checks above do flag what they look for.

    Reference: the raft package docstring (sans-I/O)
    """
    tree = ast.parse("import os.path\nfrom time import monotonic\nimport random\nrandom.random()")

    assert imported_modules(tree) & FORBIDDEN == {"os", "time"}
    assert global_random_calls(tree) == ["random.random"]
