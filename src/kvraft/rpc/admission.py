"""The admission bounds of an RPC server: how many connections, how idle, how slow. Pure.

Its own module, with no I/O, so that the command line can show the defaults
in ``--help`` without loading the transport. The server enforces them
(:mod:`kvraft.rpc.server`); why each exists:

- ``max_connections``: each connection costs a socket, buffers up to a
  frame and up to ``MAX_IN_FLIGHT`` handlers; without a cap a flood of
  connections exhausts file descriptors and memory for everyone.
- ``idle_timeout_s``: a connection that completes no frame and runs no
  handler for this long holds a slot for nothing; clients reconnect on
  their next call, peers send heartbeats far more often.
- ``frame_timeout_s``: a frame (its 4-byte header included) must arrive
  whole within this long of its first byte; a slow-header sender that dribbles
  a byte a minute would otherwise hold a connection and its buffer forever.
"""

from __future__ import annotations

from dataclasses import dataclass

# Connections a server holds at once (peers, clients and strangers together);
# each costs a socket, buffers up to a frame and up to MAX_IN_FLIGHT handlers.
DEFAULT_MAX_CONNECTIONS = 1024
# A connection that completes no frame (and runs no handler) for this long is closed.
DEFAULT_IDLE_TIMEOUT_S = 300.0
# A frame (its 4-byte header included) must arrive whole within this long of its first byte.
DEFAULT_FRAME_TIMEOUT_S = 10.0
# Connections refused over the cap are logged once per this many.
REFUSALS_PER_LOG_LINE = 100


@dataclass(frozen=True)
class ConnectionLimits:
    """The admission bounds of one server (see the module docstring)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"--max-connections must be >= 1, not {self.max_connections}")
        if not self.idle_timeout_s > 0:
            raise ValueError(f"--idle-timeout-s must be > 0, not {self.idle_timeout_s}")
        if not self.frame_timeout_s > 0:
            raise ValueError(f"--frame-timeout-s must be > 0, not {self.frame_timeout_s}")
