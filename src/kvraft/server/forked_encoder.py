"""Snapshot encoding in a forked child: the parent's event loop never waits for the GIL.

Why: encoding a million keys takes about 2.3 s of pure Python. In a thread
beside the event loop it holds the GIL in 5 ms slices for all that time (3.4 s
measured under load), the loop's heartbeats and applies queue behind it, and a
follower once won an election meanwhile (issue 14). Redis's answer fits here:
``fork()`` between two applies gives the child a copy-on-write view of the
state as of exactly that index, at the price of copying the page tables (tens
of ms on the loop for a large heap; measured in benchmarks/results/memory.md);
the child serialises it, writes it to a pipe and exits, and the parent's
encoder thread only reads the pipe, which releases the GIL.

What the child may do (a child of a threaded process owns only copies of the
other threads' locks, possibly held): run the encoder, which is pure Python
and msgpack over objects nobody else touches in the child, ``os.write`` to
the pipe, and ``os._exit``. No logging, no SQLite, no asyncio, no atexit
handlers, no finalizers of the parent's objects. It closes every other
inherited descriptor first, so that a listening socket or a database file is
never held past its parent (a restarted server can bind its port at once),
and resets the signals the parent handles so that a signal meant for the
group does not run the parent's handler code in the child.

The stream on the pipe: an 8-byte big-endian length, the data, then
:data:`_TRAILER`. The parent checks the length and the trailer (a child that
died half-way is an error, never a short snapshot) and reaps the child. The
length first lets the parent read the data straight into one buffer of the
right size: one copy of the snapshot in the parent, not chunks plus a join.

An encoding that is captured but never run (a snapshot abandoned by a node
that stopped) kills and reaps its child when the encoder is dropped.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import weakref
from collections.abc import Callable, Iterable
from typing import Final

if sys.platform != "win32":
    import fcntl  # imported here, never in the child (another thread may hold an import lock)

log = logging.getLogger("kvraft.snapshot")

_TRAILER: Final = b"KVRSNAP-END"
_LENGTH_BYTES: Final = 8
# Linux's F_SETPIPE_SZ: a 1 MiB pipe means 16x fewer reads and writes than the
# default 64 KiB (the unprivileged maximum is 1 MiB).
_F_SETPIPE_SZ: Final = 1031
_PIPE_BYTES: Final = 1 << 20
_SIGNALS_TO_RESET: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The child runs this much nicer than its parent: it uses the CPU the server
# leaves idle, and yields it to the server at once. At the same priority, the
# children of three nodes on the 2-core benchmark machine took 1.5 cores for
# seconds; the servers got a third of a core each, and every put in flight
# waited 630-730 ms (the 1M-key load: benchmarks/results/memory-1m.md). Not
# the lowest priority (19): under a load that keeps every core busy, a
# child at nice 10 still gets about a tenth of a core against one busy
# server, so the snapshot still ends, in tens of seconds, and the log it
# compacts stays bounded.
CHILD_NICENESS: Final = 10


class EncodeFailed(Exception):
    """The child that encoded a snapshot failed or died before finishing; nothing is returned."""


def fork_supported() -> bool:
    """Whether this platform can fork (POSIX); elsewhere snapshots are encoded in a thread."""
    return hasattr(os, "fork")


class ForkedEncoding:
    """One snapshot being encoded by a child; calling it waits for the bytes (a worker thread).

    Create it on the event loop between two applies: the child encodes the
    state exactly as it is at that moment, whatever the parent does next.
    """

    def __init__(self, chunks: Callable[[], Iterable[bytes]]) -> None:
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # the child: never returns
            _child(write_fd, chunks)
        os.close(write_fd)
        self.pid = pid
        self._read_fd = read_fd
        self._done = False
        self._reaper = weakref.finalize(self, _abandon, pid, read_fd)

    def __call__(self) -> bytes:
        """The encoded bytes; EncodeFailed if the child did not deliver all of them."""
        assert not self._done, "a forked encoding is read once"
        self._done = True
        self._reaper.detach()
        with os.fdopen(self._read_fd, "rb", buffering=_PIPE_BYTES) as pipe:
            try:
                head = pipe.read(_LENGTH_BYTES)
                if len(head) != _LENGTH_BYTES:
                    raise EncodeFailed(self._why("before sending the snapshot's length"))
                size = int.from_bytes(head, "big")
                # A buffered read of a known size fills one bytes object of that size.
                data = pipe.read(size)
                tail = pipe.read(len(_TRAILER) + 1)
                if len(data) != size or tail != _TRAILER:
                    raise EncodeFailed(
                        self._why(f"after {len(data)} of {size} bytes (trailer {tail!r})")
                    )
            finally:
                status = _reap(self.pid)
        if status not in (None, 0):
            raise EncodeFailed(f"snapshot encoder child {self.pid} exited with status {status}")
        return data

    def _why(self, when: str) -> str:
        status = _reap(self.pid)
        return f"snapshot encoder child {self.pid} stopped {when} (exit status {status})"


def _reap(pid: int) -> int | None:
    """Wait for ``pid``; its exit code (negative: killed by that signal), None if reaped already."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # someone else's SIGCHLD handler reaped it
        return None
    return os.waitstatus_to_exitcode(status)


def _abandon(pid: int, read_fd: int) -> None:
    """An encoding nobody will read: stop its child and reap it (never leave a zombie)."""
    os.close(read_fd)  # the child's next write fails with EPIPE, if it is still writing
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _child(write_fd: int, chunks: Callable[[], Iterable[bytes]]) -> None:
    """The forked child: encode, write, exit. Never returns, never raises."""
    code = 1
    try:
        gc.disable()  # a collection would touch (and so copy) every page for nothing
        with contextlib.suppress(OSError):
            os.nice(CHILD_NICENESS)
        try:
            signal.set_wakeup_fd(-1)  # the parent's loop reads that fd, not us
            for signum in _SIGNALS_TO_RESET:
                signal.signal(signum, signal.SIG_DFL)
        except ValueError:
            pass  # not the main thread's interpreter: no handlers of the parent's to reset
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, 1 << 16)
        # Not Linux, or a lower limit: the default pipe works too.
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        parts = list(chunks())
        size = sum(len(part) for part in parts)
        _write_all(write_fd, size.to_bytes(_LENGTH_BYTES, "big"))
        for part in parts:
            _write_all(write_fd, part)
        _write_all(write_fd, _TRAILER)
        code = 0
    except BaseException:  # a child reports by its exit code only
        code = 1
    finally:
        os._exit(code)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fork_encoder(chunks: Callable[[], Iterable[bytes]]) -> Callable[[], bytes] | None:
    """A :class:`ForkedEncoding` of ``chunks()``; None if the fork failed (logged).

    ``chunks`` runs in the child only, over the state as it is now: the caller
    passes the live state, no copy. On None the caller encodes another way.
    """
    try:
        return ForkedEncoding(chunks)
    except OSError as exc:  # EAGAIN, ENOMEM: too many processes or not enough memory
        log.warning("could not fork to encode a snapshot (%s); encoding in a thread", exc)
        return None
