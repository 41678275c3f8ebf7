"""Child process of test_sqlite_crash: runs a seeded workload on a store until it is killed.

Usage: sqlite_crash_child.py DATA_DIR SEED. Writes ``open`` once the store is
open, then the number of calls completed after each save/compact returns, so
everything it reports is durable by the storage's contract.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from sqlite_workload import Workload, apply

from kvraft.storage.sqlite import SqliteStorage

CLUSTER = "crash"
NODE = 1
SNAPSHOT_BYTES = (1 << 20, 4 << 20)


def main() -> None:
    data_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    store = SqliteStorage.open(data_dir, cluster_id=CLUSTER, node_id=NODE)
    workload = Workload(store.load(), snapshot_bytes=SNAPSHOT_BYTES)
    rng = random.Random(seed)
    os.write(1, b"open\n")
    done = 0
    while True:
        apply(store, workload.next_op(rng))
        done += 1
        os.write(1, b"%d\n" % done)  # unbuffered: the parent sees it even if we die next


if __name__ == "__main__":
    main()
