"""GcPauseWatch: one WARNING line per collection at least as long as its bound, none shorter."""

from __future__ import annotations

import gc
import logging

import pytest

from kvraft.server.gc_pauses import SLOW_COLLECTION_S, GcPauseWatch


class FakeClock:
    def __init__(self) -> None:
        self.now = 64.0

    def __call__(self) -> float:
        return self.now


def collection(watch: GcPauseWatch, clock: FakeClock, seconds: float, generation: int) -> None:
    watch._on_collection("start", {"generation": generation})
    clock.now += seconds
    watch._on_collection("stop", {"generation": generation, "collected": 7})


def test_a_collection_at_the_bound_is_logged_and_one_just_under_it_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kvraft.node")
    clock = FakeClock()
    bound = 0.0625  # exact in binary, so "at the bound" is exact too
    watch = GcPauseWatch(2, slow_s=bound, clock=clock)

    collection(watch, clock, bound - 0.0078125, 0)
    assert watch.slow_collections == 0 and not caplog.records
    collection(watch, clock, bound, 2)

    assert watch.slow_collections == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "n2 slow garbage collection: 62 ms (generation 2, 7 collected)"
    assert watch.longest_s == bound
    assert GcPauseWatch(0).slow_s == SLOW_COLLECTION_S


def test_installed_it_sees_real_collections_and_uninstalled_it_does_not() -> None:
    watch = GcPauseWatch(0, slow_s=0.0)  # every collection counts as slow
    watch.install()
    watch.install()  # once only
    try:
        assert gc.callbacks.count(watch._on_collection) == 1
        gc.collect()
        assert watch.slow_collections == 1
    finally:
        watch.uninstall()
    gc.collect()
    assert watch.slow_collections == 1
    assert watch._on_collection not in gc.callbacks


def test_what_survives_a_full_collection_is_frozen_and_unfrozen_once_it_halves() -> None:
    """Later full collections walk only newer objects; once the node holds half the
    log entries it held at the freeze (a snapshot compacted the log), everything is
    unfrozen for one collection over the now smaller heap."""
    log_entries = [[i] for i in range(200_000)]  # containers, as log entries are
    watch = GcPauseWatch(0, held=lambda: len(log_entries))
    watch.install()
    try:
        gc.collect()
        watch.tend()
        frozen = gc.get_freeze_count()
        assert watch.freezes == 1 and frozen >= len(log_entries)
        watch.tend()  # nothing new: nothing changes
        assert (watch.freezes, watch.unfreezes) == (1, 0)

        del log_entries[100_001:]  # one more than half: still frozen
        watch.tend()
        assert watch.unfreezes == 0 and gc.get_freeze_count() > 0
        del log_entries[100_000:]  # half: unfrozen
        watch.tend()
        assert watch.unfreezes == 1 and gc.get_freeze_count() == 0
    finally:
        watch.uninstall()
        gc.unfreeze()


def test_without_freezing_nothing_is_frozen() -> None:
    watch = GcPauseWatch(0, freeze=False)
    watch.install()
    try:
        gc.collect()
        watch.tend()
        assert watch.freezes == 0 and gc.get_freeze_count() == 0
    finally:
        watch.uninstall()
