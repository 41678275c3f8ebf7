"""The package as a Python user meets it: ``from kvraft import ...``, ``__version__``.

The README and docs/architecture.md promise these names at the top of the
package; the examples that use them are run by ``tests/docs``. Here: each name
is the class that does the work, ``import kvraft`` stays cheap, and the version
has one source.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import kvraft
import kvraft.client.async_client
import kvraft.client.client
import kvraft.client.lock

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = ["Client", "AsyncClient", "Lock", "KVError", "NoKey", "VersionMismatch", "Maybe",
          "Unavailable", "WrongLeader", "InvalidArgument", "Busy", "ClientClosed",
          "LockStateUnknown", "Unauthorized", "client_tls_context",
          "Compare", "DeleteOk", "KeyValue", "PutOk", "RangeResult", "SetOk", "TxnDelete",
          "TxnDeleteRange", "TxnGet", "TxnPut", "TxnRange", "TxnResult", "TxnSet",
          "prefix_end", "Compacted", "WatchEvent", "Election", "Lease", "KeptLease",
          "LeaseTtlResult", "LeaseLimit", "LeaseNotFound"]  # fmt: skip


def run_python(code: str) -> str:
    """``code`` in a fresh interpreter (nothing imported yet); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_documented_names_import_from_the_package() -> None:
    """The README's import line works, and each name is the implementation itself."""
    from kvraft import (
        AsyncClient,
        Busy,
        Client,
        KVError,
        Lock,
        Maybe,
        NoKey,
        Unavailable,
        VersionMismatch,
    )

    assert Client is kvraft.client.client.Client
    assert AsyncClient is kvraft.client.async_client.AsyncClient
    assert Lock is kvraft.client.lock.Lock
    for error in (NoKey, VersionMismatch, Maybe, Unavailable, Busy):
        assert issubclass(error, KVError)


def test_all_lists_exactly_the_public_names() -> None:
    assert sorted(kvraft.__all__) == sorted(PUBLIC)
    namespace: dict[str, object] = {}
    exec("from kvraft import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Clinet'"):
        kvraft.Clinet  # noqa: B018  # type: ignore[attr-defined]


def test_import_kvraft_loads_only_the_errors() -> None:
    """``import kvraft`` (which every submodule import runs first) pulls in no client.

    The Raft core imports ``kvraft.errors``; if the package's ``__init__``
    imported the client, every core import would carry asyncio, sockets and
    msgpack with it.
    """
    code = (
        "import json, sys, kvraft\n"
        "before = sorted(m for m in sys.modules if m.startswith('kvraft') or m in "
        "('asyncio', 'socket', 'msgpack'))\n"
        "kvraft.Client\n"
        "print(json.dumps([before, 'kvraft.client.client' in sys.modules]))\n"
    )
    before, client_loaded = json.loads(run_python(code))
    assert before == ["kvraft", "kvraft.errors"]
    assert client_loaded


def test_version_has_one_source() -> None:
    """pyproject reads the version from ``kvraft.__version__``; the metadata agrees."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kvraft.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", kvraft.__version__)
    assert importlib.metadata.version("kvraft") == kvraft.__version__


def test_version_option_prints_the_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvraft", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"kvraft {kvraft.__version__}\n", "")
