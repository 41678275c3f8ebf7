"""The key-value workloads again, with a snapshot threshold small enough to snapshot constantly."""

from __future__ import annotations

import pytest

from .test_kvraft import lock_workers, partition_churn, rounds_with_faults

pytestmark = pytest.mark.slow

SMALL = ["--snapshot-threshold", "4000"]


def test_snapshot_persist_partition_kv(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Partitions and whole-cluster crashes while snapshots are taken every few entries."""
    cluster = make_cluster(5, server_args=SMALL)
    rounds_with_faults(
        cluster, nclients=3, rounds=3, round_s=1.5, fault=partition_churn, crash_all=True
    )


def test_snapshot_lock(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The lock keeps mutual exclusion with frequent snapshots."""
    cluster = make_cluster(3, server_args=SMALL)
    lock_workers(cluster, 5, acquisitions=4)
