"""Fixtures of the namespace suite: skip where namespaces cannot be made, clean up always.

The probe runs once per session and makes a real throw-away network (see
``network.probe``); if that fails, every test here is skipped with its reason
(not root, no ``ip``, no permission). ``netns_cluster(n)`` builds a
:class:`NetnsCluster` and closes it at teardown whatever the test did, and a
failed test's report gets the tail of every node's log.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import NetnsCluster
from .network import probe

_CLUSTERS = pytest.StashKey[list[NetnsCluster]]()
_PROBE = pytest.StashKey[str | None]()


@pytest.fixture(scope="session")
def netns_available(pytestconfig: pytest.Config) -> None:
    """Skip unless this process can make namespaces, veth pairs and a bridge."""
    if _PROBE not in pytestconfig.stash:
        pytestconfig.stash[_PROBE] = probe()
    reason = pytestconfig.stash[_PROBE]
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")


@pytest.fixture
def netns_cluster(
    netns_available: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., NetnsCluster]]:
    """``netns_cluster(n=3, **kwargs)``: a started NetnsCluster, closed at teardown."""
    clusters: list[NetnsCluster] = []
    request.node.stash[_CLUSTERS] = clusters

    def make(n: int = 3, **kwargs: Any) -> NetnsCluster:
        kwargs.setdefault("base_dir", tmp_path / f"cluster{len(clusters)}")
        cluster = NetnsCluster(n, **kwargs)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in reversed(clusters):
            cluster.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of every node's log to a failed test's report."""
    report = yield
    if report.failed:
        for cluster in item.stash.get(_CLUSTERS, []):
            report.sections.extend(cluster.log_sections())
    return report
