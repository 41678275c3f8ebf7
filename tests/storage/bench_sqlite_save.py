"""Throughput of SqliteStorage.save() with fsync on; run by hand, not collected by pytest.

    .venv/bin/python tests/storage/bench_sqlite_save.py [--seconds 2] [--dir /path/on/the/disk]

Prints one row per (WAL autocheckpoint setting, batch size): saves/s, entries/s,
microseconds per save and per entry, for batches of 0 (a hard-state-only
save: a vote or a term), 1, 64 and 512 entries of 100 bytes; then the time to
compact with and load a 100 MB snapshot. Every save is one fsynced commit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kvraft.raft.messages import Entry
from kvraft.raft.ready import HardState, Snapshot
from kvraft.storage.sqlite import SqliteStorage

COMMAND = b"x" * 100


def bench_saves(data_dir: Path, batch: int, seconds: float, autocheckpoint: int) -> str:
    store = SqliteStorage.open(data_dir, cluster_id="bench", node_id=0)
    assert store._conn is not None
    store._conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
    saves = entries = 0
    index = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            batch_entries = [
                Entry(term=1, index=index + i, command=COMMAND) for i in range(1, batch + 1)
            ]
            index += batch
            # An append also moves the commit index, as a follower's Ready does;
            # a hard-state-only save moves the term (a vote).
            term = 1 if batch else saves + 2
            store.save(HardState(term, 0, max(index - batch, 0)), batch_entries, None)
            saves += 1
            entries += batch
    elapsed = time.perf_counter() - start
    store.close()
    per_entry = f"{elapsed / entries * 1e6:8.1f}" if entries else "       -"
    return (
        f"{autocheckpoint:>6} {batch:>5} {saves / elapsed:>9.0f} {entries / elapsed:>10.0f}"
        f" {elapsed / saves * 1e6:>9.0f} {per_entry}"
    )


def bench_snapshot(data_dir: Path, size: int) -> str:
    store = SqliteStorage.open(data_dir, cluster_id="bench", node_id=0)
    store.save(HardState(1, 0, 1), [Entry(term=1, index=1, command=COMMAND)], None)
    data = bytes(range(256)) * (size // 256)
    start = time.perf_counter()
    store.compact(Snapshot(1, 1, data))
    compact_s = time.perf_counter() - start
    store.close()
    start = time.perf_counter()
    store = SqliteStorage.open(data_dir, cluster_id="bench", node_id=0)
    state = store.load()
    open_s = time.perf_counter() - start
    assert state.snapshot is not None and state.snapshot.data == data
    store.close()
    return (
        f"snapshot {size / 1e6:.0f} MB: compact {compact_s * 1e3:.0f} ms,"
        f" open+load {open_s * 1e3:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the stores")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print("autockpt batch   saves/s  entries/s   us/save  us/entry")
        for autocheckpoint in (1000, 4096):
            for batch in (0, 1, 64, 512):
                data_dir = Path(tmp) / f"{autocheckpoint}-{batch}"
                print(bench_saves(data_dir, batch, args.seconds, autocheckpoint), flush=True)
        print(bench_snapshot(Path(tmp) / "snapshot", 100_000_000))


if __name__ == "__main__":
    main()
