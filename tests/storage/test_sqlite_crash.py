"""SIGKILL at any instant leaves the old state or the new one, never a mix.

A child process (sqlite_crash_child.py) runs a seeded Raft-like workload —
appends, truncating overwrites, term changes, compactions (half of them with the
snapshot file written ahead by stage_snapshot, as the node does) and snapshot
installs with snapshots of 1-4 MB — and reports each call once it has returned. We kill
it at a random instant, reopen the store (which must pass every check), and
replay the same seeded workload on MemoryStorage: the stored state must be
exactly the state after the last reported call, or after the one in flight.
So everything reported durable is there, and nothing half-written is. Each
round continues from the store the previous kill left behind, so recovery
itself is crashed into too (every fifth round kills without waiting for the
child to open the store).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from sqlite_crash_child import CLUSTER, NODE, SNAPSHOT_BYTES
from sqlite_workload import Compact, Op, Workload

from kvraft.raft.ready import PersistentState
from kvraft.storage.sqlite import SqliteStorage

CHILD = Path(__file__).with_name("sqlite_crash_child.py")
ROUNDS = 20
MASTER_SEED = 20_260_509


def run_child_until_killed(
    data_dir: Path, seed: int, rng: random.Random, stderr_path: Path, *, wait_for_open: bool
) -> int:
    """Start the child, SIGKILL it at a random instant, return how many calls it reported."""
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), str(seed)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert child.stdout is not None
    lines: list[bytes] = []
    opened = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            opened.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if wait_for_open:
        assert opened.wait(timeout=30), stderr_path.read_text()
    time.sleep(rng.uniform(0.0, 0.25))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    reader.join(timeout=30)
    assert child.returncode == -signal.SIGKILL, (
        f"child died by itself ({child.returncode}): {stderr_path.read_text()}"
    )
    counts = [int(line) for line in lines if line.strip().isdigit()]
    return counts[-1] if counts else 0


def expected_states(
    start: PersistentState, seed: int, reported: int
) -> tuple[PersistentState, PersistentState, Op]:
    """The states after ``reported`` calls and after one more, and that in-flight call."""
    workload = Workload(start, snapshot_bytes=SNAPSHOT_BYTES)
    rng = random.Random(seed)
    for _ in range(reported):
        workload.next_op(rng)
    old = workload.model.load()
    in_flight = workload.next_op(rng)
    return old, workload.model.load(), in_flight


def describe(op: Op) -> str:
    if isinstance(op, Compact):
        return "compact"
    if op.snapshot is not None:
        return "install-snapshot"
    return "append" if op.entries else "hard-state"


def test_sigkill_at_random_instants_leaves_the_old_or_the_new_state(tmp_path: Path) -> None:
    rng = random.Random(MASTER_SEED)
    data_dir = tmp_path / "n1"
    start = PersistentState()
    outcomes: Counter[str] = Counter()
    for round_ in range(ROUNDS):
        seed = rng.randrange(2**32)
        reported = run_child_until_killed(
            data_dir,
            seed,
            rng,
            tmp_path / f"child-{round_}.stderr",
            wait_for_open=round_ % 5 != 4,
        )
        old, new, in_flight = expected_states(start, seed, reported)

        store = SqliteStorage.open(data_dir, cluster_id=CLUSTER, node_id=NODE)
        stored = store.load()
        size = store.size_bytes()
        store.close()

        context = f"round {round_} (seed {seed}), killed after {reported} reported calls"
        assert stored in (old, new), f"{context}: stored state is neither old nor new"
        # Snapshot files the kill left unrecorded or superseded are gone after the open.
        files = sorted(p.name for p in data_dir.glob("snapshot-*"))
        assert len(files) == (stored.snapshot is not None), f"{context}: files {files}"
        assert size == sum(len(s.data) for s in [stored.snapshot] if s) + sum(
            32 + len(e.command or b"") for e in stored.entries
        ), context
        outcomes[f"{describe(in_flight)}:{'new' if stored == new and old != new else 'old'}"] += 1
        start = stored
    print(f"\n{ROUNDS} kills; call in flight:outcome -> {dict(sorted(outcomes.items()))}")
