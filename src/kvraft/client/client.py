"""Client: the blocking facade of :class:`AsyncClient`.

It owns one event loop in a daemon thread and runs every call there, so one
``Client`` can be shared by many threads and there is a single implementation
of retries and ``Maybe`` (the async one).
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from kvraft.client.async_client import DEFAULT_CALL_TIMEOUT_S, AsyncClient
from kvraft.kv_protocol import DEFAULT_MAX_VALUE_BYTES
from kvraft.loop_thread import EventLoopThread

T = TypeVar("T")


class Client:
    """Blocking client of a kvraft cluster (thread-safe); same contract as AsyncClient."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        deadline: float | None = None,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        client_id: str | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self._async = AsyncClient(
            servers,
            deadline=deadline,
            call_timeout_s=call_timeout_s,
            client_id=client_id,
            max_value_bytes=max_value_bytes,
        )
        self._loop = EventLoopThread(name=f"kvraft-client-{self.client_id[:8]}")
        self._closed = False

    @property
    def client_id(self) -> str:
        return self._async.client_id

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("client is closed")
        return self._loop.run(coro, timeout_s=None)

    def get(self, key: str) -> tuple[str, int]:
        """``(value, version)`` of ``key``; raises NoKey if it does not exist."""
        return self._run(self._async.get(key))

    def put(self, key: str, value: str, version: int) -> int:
        """Store ``value`` if ``key`` is at ``version``; returns the new version."""
        return self._run(self._async.put(key, value, version))

    def close(self) -> None:
        """Close connections and stop the client's thread."""
        if self._closed:
            return
        self._run(self._async.close())
        self._closed = True
        self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
