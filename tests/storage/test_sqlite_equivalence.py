"""SqliteStorage behaves exactly like its naive twin, MemoryStorage, on every valid sequence.

After each save/compact (and across close + reopen) both must load the same
PersistentState and report the same size_bytes.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlite_workload import Workload, apply

from kvraft.raft.ready import PersistentState
from kvraft.storage.sqlite import SqliteStorage

CLUSTER = "equivalence"


def open_store(data_dir: Path) -> SqliteStorage:
    return SqliteStorage.open(data_dir, cluster_id=CLUSTER, node_id=1)


def assert_same(store: SqliteStorage, workload: Workload) -> None:
    assert store.load() == workload.model.load()
    assert store.size_bytes() == workload.model.size_bytes()


class SqliteMatchesMemory(RuleBasedStateMachine):
    """Hypothesis drives the workload's choices, so a failing sequence shrinks."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="kvraft-sqlite-eq-"))
        self.store: SqliteStorage | None = open_store(self.dir)
        self.workload = Workload(PersistentState(), snapshot_bytes=(0, 3000))

    @rule(rng=st.randoms(use_true_random=False))
    def step(self, rng: random.Random) -> None:
        assert self.store is not None
        apply(self.store, self.workload.next_op(rng))

    @rule()
    def reopen(self) -> None:
        assert self.store is not None
        self.store.close()
        self.store = open_store(self.dir)

    @precondition(lambda self: self.store is not None)
    @invariant()
    def same_state(self) -> None:
        assert self.store is not None
        assert_same(self.store, self.workload)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestSqliteMatchesMemory = SqliteMatchesMemory.TestCase
TestSqliteMatchesMemory.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_random_sequences_match_memory_storage(tmp_path: Path, seed: int) -> None:
    """Hundreds of Raft-like calls, reopening now and then; compared after every call."""
    rng = random.Random(seed)
    workload = Workload(PersistentState(), snapshot_bytes=(0, 20_000))
    store = open_store(tmp_path)
    try:
        for step in range(400):
            apply(store, workload.next_op(rng))
            if step % 50 == 49:
                store.close()
                store = open_store(tmp_path)
            assert_same(store, workload)
    finally:
        store.close()
