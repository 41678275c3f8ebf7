"""Load generator behind ``kvraft bench``: N clients, one request in flight each.

Theory of operation. One event loop runs ``clients`` :class:`AsyncClient`
instances, each looping "pick an operation, await it" for ``warmup_s +
duration_s`` seconds, so exactly ``clients`` requests are in flight. Only
operations that *complete* inside the measured window (after the warm-up)
count, for throughput and for latency; an operation's latency is its whole
client-side time, retries included.

Workloads:

- ``put``: versioned puts. Each put in flight owns its key (a client takes a
  free key, puts at the version it knows, returns the key), so puts never
  conflict with each other and every one is a real write; that needs
  ``keys >= clients``.
- ``get``: gets of ``keys`` keys written once before the run (preload).
- ``mixed``: half gets, half puts (same rules), on preloaded keys.

``read``: how the gets read, ``"log"`` (the default, through the log) or
``"index"`` (read-index, no log entry; ``docs/reads.md``).

Keys are ``bench/<run id>/<n>``: a new run id per run, so every run starts
from keys at version 0 whatever the cluster holds.

Errors (``VersionMismatch`` if someone else writes our keys, ``Maybe``,
``Unavailable`` after ``deadline_s``) are counted per kind, not raised; a put
that met one re-reads its key's version before the key is used again.
``timeline=True`` keeps ``(start, end)`` of every successful operation, which
the failover benchmark uses.
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl as ssl_module
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, TextIO

from kvraft.client.async_client import (
    DEFAULT_CALL_TIMEOUT_S,
    AsyncClient,
    ReadMode,
    check_read_mode,
)
from kvraft.errors import KVError, NoKey, Unavailable

Workload = Literal["put", "get", "mixed"]
WORKLOADS: tuple[Workload, ...] = ("put", "get", "mixed")
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class BenchConfig:
    """What to run; see the module docstring."""

    servers: tuple[str, ...]
    clients: int = 64
    duration_s: float = 10.0
    warmup_s: float = 1.0
    workload: Workload = "put"
    value_size: int = 100
    keys: int = 1000
    deadline_s: float | None = 10.0
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    seed: int | None = None
    token: str | None = field(default=None, repr=False)
    ssl: ssl_module.SSLContext | None = None
    read: ReadMode = "log"

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("no servers")
        check_read_mode(self.read)
        if self.workload not in WORKLOADS:
            raise ValueError(
                f"workload must be one of {', '.join(WORKLOADS)}, not {self.workload!r}"
            )
        if self.clients < 1 or self.keys < 1 or self.value_size < 0:
            raise ValueError("clients and keys must be >= 1, value_size >= 0")
        if self.workload != "get" and self.keys < self.clients:
            raise ValueError(f"{self.keys} keys for {self.clients} clients: puts need one each")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("duration must be > 0 and warm-up >= 0")


@dataclass
class OpStats:
    """Measured operations of one kind: latencies of the successes, errors by kind."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self, window_s: float) -> dict[str, Any]:
        """ops, ops/s, latency percentiles in ms, errors by kind."""
        lat = sorted(self.latencies_s)
        out: dict[str, Any] = {
            "ops": len(lat),
            "ops_per_s": len(lat) / window_s if window_s > 0 else 0.0,
        }
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            out[f"{name}_ms"] = percentile(lat, q) * 1000 if lat else None
        out["max_ms"] = lat[-1] * 1000 if lat else None
        out["mean_ms"] = sum(lat) / len(lat) * 1000 if lat else None
        out["errors"] = dict(self.errors)
        return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence (q in 0..1)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class BenchResult:
    """What a run measured. Times in ``timeline`` are ``time.perf_counter()`` values."""

    config: BenchConfig
    window_s: float
    stats: dict[str, OpStats]
    timeline: list[tuple[str, float, float]] = field(default_factory=list)
    window_start: float = 0.0
    #: CPU seconds this process spent per successful operation (whole run, warm-up included)
    client_cpu_s_per_op: float | None = None

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per kind of operation, plus ``all`` when the workload mixes them."""
        out = {name: s.summary(self.window_s) for name, s in self.stats.items()}
        if len(self.stats) > 1:
            merged = OpStats()
            for s in self.stats.values():
                merged.latencies_s.extend(s.latencies_s)
                merged.errors.update(s.errors)
            out["all"] = merged.summary(self.window_s)
        return out


class _Keys:
    """The key space of a run: versions we know, and which keys a put holds."""

    def __init__(self, prefix: str, n: int, rng: random.Random) -> None:
        self.names = [f"{prefix}/{i}" for i in range(n)]
        self.versions = [0] * n
        self.free = list(range(n))  # keys no put holds; order irrelevant
        self.rng = rng

    def take(self) -> int:
        """A random key no other put holds (there is one: keys >= clients)."""
        free = self.free
        j = self.rng.randrange(len(free))
        free[j], free[-1] = free[-1], free[j]
        return free.pop()

    def give_back(self, k: int) -> None:
        self.free.append(k)

    def any(self) -> int:
        return self.rng.randrange(len(self.names))


class Bench:
    """One run of a :class:`BenchConfig`; :meth:`run` once."""

    def __init__(self, config: BenchConfig, *, timeline: bool = False) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        run_id = uuid.UUID(int=self.rng.getrandbits(128)).hex[:8]
        self.keys = _Keys(f"bench/{run_id}", config.keys, self.rng)
        self.keep_timeline = timeline
        self.stats: dict[str, OpStats] = {}
        if config.workload in ("get", "mixed"):
            self.stats["get"] = OpStats()
        if config.workload in ("put", "mixed"):
            self.stats["put"] = OpStats()
        self.timeline: list[tuple[str, float, float]] = []
        self.completed = 0  # successes so far, warm-up included (for progress)
        self.failed = 0
        self._recent: list[float] = []  # latencies since the last progress line
        self._window_start = 0.0
        self._window_end = 0.0
        self._filler = "x" * config.value_size

    def _client(self) -> AsyncClient:
        return AsyncClient(
            list(self.config.servers),
            deadline=self.config.deadline_s,
            call_timeout_s=self.config.call_timeout_s,
            token=self.config.token,
            ssl=self.config.ssl,
            read=self.config.read,
        )

    def _value(self, n: int) -> str:
        size = self.config.value_size
        stamp = f"{n:x}-"
        return (stamp + self._filler)[:size] if size >= len(stamp) else self._filler

    async def check_reachable(self) -> None:
        """One get through the client, so an unreachable cluster fails fast (Unavailable)."""
        client = self._client()
        try:
            await client.get(self.keys.names[0])
        except NoKey:
            pass
        finally:
            await client.close()

    async def preload(self) -> None:
        """Write every key once (version 0 -> 1), ``clients`` at a time."""
        queue = list(range(len(self.keys.names)))

        async def worker() -> None:
            client = self._client()
            try:
                while queue:
                    k = queue.pop()
                    self.keys.versions[k] = await client.put(self.keys.names[k], self._value(k), 0)
            finally:
                await client.close()

        await asyncio.gather(*(worker() for _ in range(min(self.config.clients, len(queue)))))

    async def run(self, progress: TextIO | None = None) -> BenchResult:
        """Preload if needed, then run warm-up and measured window; never raises op errors."""
        await self.check_reachable()
        if self.config.workload != "put":
            await self.preload()
        now = time.perf_counter()
        cpu_start = time.process_time()
        self._window_start = now + self.config.warmup_s
        self._window_end = self._window_start + self.config.duration_s
        reporter = None
        if progress is not None:
            reporter = asyncio.get_running_loop().create_task(self._report(progress, now))
        try:
            await asyncio.gather(*(self._worker(i) for i in range(self.config.clients)))
        finally:
            if reporter is not None and progress is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
                if progress.isatty():
                    progress.write("\n")
                    progress.flush()
        cpu = time.process_time() - cpu_start
        return BenchResult(
            self.config,
            self.config.duration_s,
            self.stats,
            self.timeline,
            self._window_start,
            cpu / self.completed if self.completed else None,
        )

    async def _worker(self, index: int) -> None:
        client = self._client()
        workload = self.config.workload
        n = index
        try:
            while True:
                start = time.perf_counter()
                if start >= self._window_end:
                    return
                is_put = workload == "put" or (workload == "mixed" and self.rng.random() < 0.5)
                if is_put:
                    kind, error = "put", await self._put(client, n)
                else:
                    kind, error = "get", await self._get(client)
                end = time.perf_counter()
                n += self.config.clients
                self._record(kind, start, end, error)
        finally:
            await client.close()

    async def _put(self, client: AsyncClient, n: int) -> str | None:
        keys = self.keys
        k = keys.take()
        try:
            keys.versions[k] = await client.put(keys.names[k], self._value(n), keys.versions[k])
            return None
        except KVError as exc:
            if not isinstance(exc, Unavailable):
                await self._resync(client, k)
            return type(exc).__name__
        finally:
            keys.give_back(k)

    async def _resync(self, client: AsyncClient, k: int) -> None:
        """Learn key ``k``'s version after a put failed (someone else wrote it, or Maybe)."""
        try:
            _, self.keys.versions[k] = await client.get(self.keys.names[k])
        except NoKey:
            self.keys.versions[k] = 0
        except KVError:
            pass  # the next put of this key will tell

    async def _get(self, client: AsyncClient) -> str | None:
        k = self.keys.any()
        try:
            await client.get(self.keys.names[k])
            return None
        except KVError as exc:
            return type(exc).__name__

    def _record(self, kind: str, start: float, end: float, error: str | None) -> None:
        if error is None:
            self.completed += 1
            self._recent.append(end - start)
            if self.keep_timeline:
                self.timeline.append((kind, start, end))
        else:
            self.failed += 1
        if not self._window_start <= end <= self._window_end:
            return
        stats = self.stats[kind]
        if error is None:
            stats.latencies_s.append(end - start)
        else:
            stats.errors[error] += 1

    async def _report(self, out: TextIO, t0: float) -> None:
        """A progress line every PROGRESS_INTERVAL_S: rewritten in place on a terminal."""
        start, end = ("\r", "") if out.isatty() else ("", "\n")
        last_count, last_time = 0, t0
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            now = time.perf_counter()
            rate = (self.completed - last_count) / (now - last_time)
            recent, self._recent = sorted(self._recent), []
            p99 = f"{percentile(recent, 0.99) * 1000:7.2f} ms" if recent else "      - ms"
            phase = "warm-up" if now < self._window_start else "measuring"
            left = max(0.0, self._window_end - now)
            out.write(
                f"{start}{phase:9}  {now - t0:5.1f}s  {self.completed:9,d} ops  "
                f"{rate:9,.0f} ops/s  p99 {p99}  errors {self.failed}  {left:4.0f}s left {end}"
            )
            out.flush()
            last_count, last_time = self.completed, now


def run_bench(config: BenchConfig, *, progress: bool = False) -> BenchResult:
    """Run ``config`` on a new event loop (uvloop if available)."""
    from kvraft.rpc.event_loop import install_event_loop_policy

    install_event_loop_policy()
    return asyncio.run(Bench(config).run(sys.stderr if progress else None))


# ----------------------------------------------------------------------- output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_result(result: BenchResult) -> str:
    """The final table: one row per kind of operation (and ``all`` for mixed)."""
    c = result.config
    workload = (
        c.workload if c.workload == "put" or c.read == "log" else f"{c.workload} (read index)"
    )
    head = (
        f"kvraft bench: {workload}, {c.clients} clients in flight, {c.duration_s:g}s measured "
        f"after {c.warmup_s:g}s warm-up, {c.value_size}-byte values, {c.keys} keys"
    )
    header = ["op", "ops", "ops/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"]
    rows = [header]
    for name, s in result.summary().items():
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s["errors"].items())) or "0"
        rows.append(
            [
                name,
                f"{s['ops']:,}",
                f"{s['ops_per_s']:,.0f}",
                _ms(s["p50_ms"]),
                _ms(s["p95_ms"]),
                _ms(s["p99_ms"]),
                _ms(s["max_ms"]),
                errors,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [head]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:-1], widths[1:-1], strict=True)
        ]
        lines.append("  ".join([*cells, r[-1]]))
    if result.client_cpu_s_per_op is not None:
        lines.append(f"client CPU: {result.client_cpu_s_per_op * 1e6:.0f} us per operation")
    return "\n".join(lines)


def result_json(result: BenchResult) -> dict[str, Any]:
    """The results as plain data: the config and, per kind of operation, its summary."""
    # Credentials are not results: the token is a secret, a context no data.
    config = asdict(replace(result.config, token=None, ssl=None))
    config["servers"] = list(result.config.servers)
    config["tls"] = result.config.ssl is not None
    cpu = result.client_cpu_s_per_op
    return {
        "config": config,
        "results": result.summary(),
        "client_cpu_us_per_op": None if cpu is None else cpu * 1e6,
    }


def failover_time_s(
    timeline: Sequence[tuple[str, float, float]], kill_time: float, kind: str = "put"
) -> float | None:
    """Seconds from ``kill_time`` until the first ``kind`` that *started* after it succeeded.

    Counting only operations started after the kill excludes replies the
    dead leader had already sent; it overstates the true gap by at most one
    operation's latency. None if no such operation succeeded.
    """
    ends = [end for k, start, end in timeline if k == kind and start >= kill_time]
    return min(ends) - kill_time if ends else None
