"""Every shipped module imports without the dev tools: a plain ``pip install`` works.

The dev extra (pytest, hypothesis, mypy, ruff) is not installed by
``pip install kvraft``, so no module under ``src/kvraft`` may import one of
them, even lazily at module level. The check imports every module of the
package in a fresh interpreter in which those packages cannot be imported (a
meta-path finder that refuses them, installed before anything of kvraft is
imported), as if they were not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kvraft

# Dev-only distributions and what they bring with them (pytest's plugins and
# helpers, mypy's extensions); none is a dependency of kvraft.
DEV_ONLY = ["pytest", "_pytest", "pytest_timeout", "pluggy", "iniconfig", "hypothesis", "mypy",
            "mypy_extensions", "ruff"]  # fmt: skip

# Run with -I: neither the working directory nor $PYTHONPATH is on sys.path, so
# kvraft comes from its installation, as for a user.
IMPORT_ALL = r"""
import importlib, importlib.abc, json, pkgutil, sys

blocked, package, extra_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:]
sys.path[:0] = extra_path


class RefuseDevPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (dev-only, blocked)", name=name)
        return None


preloaded = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
sys.meta_path.insert(0, RefuseDevPackages())
try:
    import pytest  # noqa: F401
    blocker_works = False
except ImportError:
    blocker_works = True

failures = {}


def record(name):
    failures[name] = repr(sys.exc_info()[1])


root = importlib.import_module(package)
imported = [package]
for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=record):
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except Exception as exc:
        failures[info.name] = repr(exc)
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
print(json.dumps({"preloaded": preloaded, "blocker_works": blocker_works,
                  "imported": imported, "failures": failures, "leaked": leaked}))
"""


def import_everything(package: str, *extra_path: str) -> dict[str, Any]:
    """Import ``package`` and all its modules with the dev packages blocked; the report."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", IMPORT_ALL, json.dumps(DEV_ONLY), package, *extra_path],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def module_names(package_dir: Path, package: str) -> list[str]:
    """Every module of a package, from its files: what the walk must have imported."""
    names = []
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join([package, *parts]))
    return sorted(names)


def test_every_shipped_module_imports_without_dev_packages() -> None:
    report = import_everything("kvraft")

    assert report["preloaded"] == [] and report["blocker_works"] is True
    assert report["failures"] == {}
    assert sorted(report["imported"]) == module_names(Path(kvraft.__file__).parent, "kvraft")
    assert report["leaked"] == []


def test_the_check_catches_a_module_that_imports_pytest(tmp_path: Path) -> None:
    """A package with one module that imports pytest fails the same check."""
    package = tmp_path / "shipped_demo"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "fine.py").write_text("import json\n")
    (package / "sub" / "fixtures.py").write_text("import pytest\n")

    report = import_everything("shipped_demo", str(tmp_path))

    assert list(report["failures"]) == ["shipped_demo.sub.fixtures"]
    assert "dev-only, blocked" in report["failures"]["shipped_demo.sub.fixtures"]
    assert "shipped_demo.sub.fine" in report["imported"]
