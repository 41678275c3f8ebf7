"""pytest fixtures and hooks for real-process clusters.

``tests/conftest.py`` loads this plugin for the whole suite
(``pytest_plugins``); a pytest run outside the suite loads it with
``-p tests.support.cluster_fixtures`` (the repository root on ``sys.path``).
It lives in the tests tree, not in ``kvraft.testing``, because it imports
pytest and the shipped package must import without it.

- ``make_cluster(n, **kwargs)`` builds a :class:`~kvraft.testing.cluster.Cluster`
  under the test's ``tmp_path`` and closes it (killing every server) at
  teardown, whether the test passed, failed, timed out or was interrupted.
- ``kvraft_server_command``: the command ``make_cluster`` runs (None: the
  product, ``python -m kvraft``); override this fixture in a conftest to run
  every cluster of a directory on another server.
- When a test fails, its report gets one section per server with the tail of
  that server's log, for every cluster created during the test (through the
  fixture or not).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from kvraft.testing.cluster import LOG_TAIL_LINES, Cluster, on_cluster_created

ClusterFactory = Callable[..., Cluster]

_CLUSTERS = pytest.StashKey[list[Cluster]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """Remember every cluster created while ``item`` runs (setup, call and teardown)."""
    created: list[Cluster] = []
    item.stash[_CLUSTERS] = created
    remove = on_cluster_created(created.append)
    try:
        yield
    finally:
        remove()
        # The logs stay on disk; the cluster objects need not outlive the test.
        del item.stash[_CLUSTERS]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of every server log to a failed test's report."""
    report = yield
    if report.failed:
        for cluster in item.stash.get(_CLUSTERS, []):
            report.sections.extend(cluster.log_sections(LOG_TAIL_LINES))
    return report


@pytest.fixture
def kvraft_server_command() -> Sequence[str] | None:
    """The server command ``make_cluster`` runs; None means ``python -m kvraft``."""
    return None


@pytest.fixture
def make_cluster(
    tmp_path: Path, kvraft_server_command: Sequence[str] | None
) -> Iterator[ClusterFactory]:
    """``make_cluster(n=3, network="reliable", ...)``: a started Cluster, closed at teardown.

    Keyword arguments are Cluster's. The first cluster lives in ``tmp_path``
    itself (logs at ``tmp_path/n0.log``), later ones in ``tmp_path/clusterK``.
    """
    clusters: list[Cluster] = []

    def make(n: int = 3, **kwargs: Any) -> Cluster:
        kwargs.setdefault(
            "base_dir", tmp_path / f"cluster{len(clusters)}" if clusters else tmp_path
        )
        kwargs.setdefault("command", kvraft_server_command)
        cluster = Cluster(n, **kwargs)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in reversed(clusters):
            cluster.close()
