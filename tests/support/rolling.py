"""What rolling-restart tests share, whatever hosts the cluster: the putter and the stop.

Used by ``tests/cluster/test_rolling_restart.py`` (processes behind proxies)
and ``tests/netns`` (processes in network namespaces): one putter that records
versioned puts on a key of its own, and one SIGTERM that reports whether the
node handed its leadership over (the line ``RaftNode`` logs when it does).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kvraft.client.async_client import AsyncClient
from kvraft.testing.history import History

# The old leader's log line for a completed hand-over on SIGTERM.
HANDOVER_LINE = re.compile(r"handed leadership to n(\d+) in (\d+) ms")


async def put_own_key(
    client: AsyncClient,
    key: str,
    history: History,
    stop: threading.Event,
    failures: list[str],
    on_put: Callable[[float], None],
) -> None:
    """Versioned puts on ``key``, one at a time, until ``stop``; each put's latency to ``on_put``.

    Every put goes into ``history``. Any error that reaches us is a failed put
    (the client retries NotLeader, timeouts and lost connections inside): it
    goes into ``failures`` and this putter stops, since its version is unknown.
    """
    version = 0
    while not stop.is_set():
        value = f"{key}-{version + 1}"
        started = time.monotonic()
        try:
            version = await history.arecord_put(
                client.client_id,
                key,
                value,
                version,
                lambda v=value, n=version: client.put(key, v, n),  # type: ignore[misc]
            )
        except Exception as exc:  # every error that reaches us is a failed put
            failures.append(f"put {key} v{version}: {type(exc).__name__}: {exc}")
            return
        on_put(time.monotonic() - started)


class Terminable(Protocol):
    """What :func:`terminate_reporting_handover` needs of a cluster harness."""

    def terminate(self, i: int, timeout_s: float = ...) -> int | None: ...

    def log_path(self, i: int) -> Path: ...


@dataclass(frozen=True)
class Stopped:
    """How a SIGTERMed node stopped: how long it took, and whom it handed leadership to."""

    stop_s: float
    handed_to: int | None
    transfer_ms: int | None


def terminate_reporting_handover(cluster: Terminable, node: int, timeout_s: float) -> Stopped:
    """SIGTERM ``node`` and reap it (exit status 0 asserted); what its log said of a hand-over."""
    before = len(cluster.log_path(node).read_text().splitlines())
    started = time.monotonic()
    status = cluster.terminate(node, timeout_s=timeout_s)
    stop_s = time.monotonic() - started
    assert status == 0, f"n{node} exited with {status}"
    new_lines = "\n".join(cluster.log_path(node).read_text().splitlines()[before:])
    handed = HANDOVER_LINE.search(new_lines)
    return Stopped(
        stop_s=round(stop_s, 3),
        handed_to=int(handed.group(1)) if handed else None,
        transfer_ms=int(handed.group(2)) if handed else None,
    )
