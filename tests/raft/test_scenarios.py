"""Scenario scripts: commands drive a small cluster; the operator log is the expected output.

Each ``scenarios/*.txt`` file alternates command lines (``> campaign 1``) with
the ``kvraft.raft`` log lines (INFO) and printed results that command produced.
The runner replays the commands and compares the whole transcript. After a
deliberate change, regenerate with ``KVRAFT_REWRITE=1 .venv/bin/pytest
tests/raft/test_scenarios.py`` and commit the new transcript only once each
changed line is understood (after etcd raft's datadriven interaction tests).

Commands (node ids are 1..n):

- ``cluster N [setting=value ...]``: a fresh cluster of N nodes (RaftConfig settings)
- ``campaign ID``: that node starts an election now
- ``propose ID COMMAND...``: proposals at that node; prints (index, term) or None
- ``transfer ID TARGET``: that node hands leadership to TARGET; prints a refusal
- ``stabilize``: deliver messages until none is left
- ``tick N [ID ...]``: N ticks of the given nodes (all by default), stabilizing after each
- ``isolate ID`` / ``heal``: cut a node off from everyone / reconnect all
- ``compact ID INDEX``: the node's application snapshots at INDEX
- ``status ID``: print role, term, leader, commit, applied, first and last index
- ``log ID``: print the node's log as index@term:command
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.raft.ready import Snapshot
from kvraft.raft.transfer import TransferRefused

from .harness import Cluster

SCENARIOS = Path(__file__).parent / "scenarios"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def raft_log() -> Iterator[Capture]:
    capture = Capture()
    logger = logging.getLogger("kvraft.raft")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(capture)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(level)


def setting(value: str) -> object:
    if value in ("true", "false"):
        return value == "true"
    return int(value)


def run_command(cluster: Cluster | None, words: list[str]) -> tuple[Cluster | None, list[str]]:
    """Perform one command; return the cluster and the lines it prints."""
    name, args = words[0], words[1:]
    if name == "cluster":
        overrides = dict(arg.split("=", 1) for arg in args[1:])
        settings = {key: setting(value) for key, value in overrides.items()}
        return Cluster.of(int(args[0]), **settings), []
    assert cluster is not None, "start with: cluster N"
    ids = [int(arg) for arg in args if arg.isdigit()]
    match name:
        case "campaign":
            cluster.cores[ids[0]].campaign()
            cluster.process_all()
        case "propose":
            results = cluster.propose(int(args[0]), *[arg.encode() for arg in args[1:]])
            cluster.process_all()
            return cluster, [" ".join(str(result) for result in results)]
        case "transfer":
            try:
                cluster.cores[ids[0]].transfer_leadership(ids[1])
            except TransferRefused as exc:
                return cluster, [f"refused: {exc}"]
            cluster.process_all()
        case "stabilize":
            cluster.stabilize()
        case "tick":
            cluster.tick(int(args[0]), [int(arg) for arg in args[1:]] or None)
        case "isolate":
            cluster.isolated.add(ids[0])
        case "heal":
            cluster.isolated.clear()
        case "compact":
            core = cluster.cores[ids[0]]
            index = int(args[1])
            term = core.term(index)
            assert term is not None
            core.compact(Snapshot(index, term, b"state@%d" % index))
        case "status":
            status = cluster.cores[ids[0]].status()
            keys = ("role", "term", "leader_id", "commit_index", "applied_index")
            keys += ("first_index", "last_index")
            return cluster, [" ".join(f"{key}={status[key]}" for key in keys)]
        case "log":
            core = cluster.cores[ids[0]]
            entries = [core.entry(i) for i in range(core.first_index, core.last_index + 1)]
            return cluster, [
                " ".join(
                    f"{e.index}@{e.term}:{(e.command or b'-').decode()}"
                    for e in entries
                    if e is not None
                )
            ]
        case _:
            raise ValueError(f"unknown command {name!r}")
    return cluster, []


def replay(script: str, capture: Capture) -> str:
    """The transcript that running the commands of ``script`` produces."""
    out: list[str] = []
    cluster: Cluster | None = None
    for line in script.splitlines():
        if line.startswith("#") or (not line.strip() and not out):
            out.append(line)
        elif line.startswith("> "):
            capture.lines.clear()
            out.append(line)
            cluster, printed = run_command(cluster, line[2:].split())
            out.extend(capture.lines)
            out.extend(printed)
        elif not line.strip():
            out.append(line)
    return "\n".join(out).rstrip("\n") + "\n"


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario_transcript(path: Path, raft_log: Capture) -> None:
    """The operator log of a scripted scenario is exactly the expected one.

    Reference: tests/raft/scenarios/ (scripts with their expected output)
    """
    expected = path.read_text()

    actual = replay(expected, raft_log)

    if os.environ.get("KVRAFT_REWRITE") == "1":
        path.write_text(actual)
        return
    assert actual == expected
