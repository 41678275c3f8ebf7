"""Leases on the wire: the commands and results both ends share, and their bounds.

A lease is a TTL in whole seconds kept in the replicated state. Keys can be
attached to it (``put``/``set(..., lease=ID)``); when the lease is revoked, by
a call or by expiry, every key attached to it is deleted in one log entry at
one revision. Granting, renewing (keepalive) and revoking are log entries like
any write; reading a lease (:class:`LeaseTtlOp`) goes through the log like a
get. The lease id is the value of a counter in the replicated state, taken by
the grant entry when it is applied, so every replica gives the same id.

Expiry is not decided here: the leader decides it on its monotonic clock and
proposes a :class:`LeaseExpireOp` (``kvraft.server.lease_keeper`` gives the
argument why that is safe). That command carries the lease's ``renewals``
count as the leader saw it and applies only if no keepalive applied since, so
an expiry decided on a view that a later keepalive overtook changes nothing.

Like :mod:`kvraft.kv_protocol` (which imports this module and puts these
commands in its ``Op`` union) it is pure: frozen classes, bounds and checks.

Bounds (protocol constants: every replica must refuse the same commands):

- :data:`MIN_LEASE_TTL_S` .. :data:`MAX_LEASE_TTL_S`: a TTL is an int in
  seconds. Below 2 s a keepalive every TTL/3 would have to get through an
  election (a second or so) to keep the lease; 30 days is far past any use
  of a lease and keeps deadlines small numbers.
- :data:`MAX_LEASES` live leases at once: each costs the state machine a
  table entry on every replica and the leader a deadline; a client granting
  in a loop must not exhaust memory.
- :data:`MAX_KEYS_PER_LEASE`: a revoke deletes all of a lease's keys in one
  entry, and ``lease_ttl(keys=True)`` lists them in one reply; 4096 keys of
  at most 1 KiB fit a frame with room to spare.
- Lease ids are ints in ``1..MAX_LEASE_ID``; 0 means "no lease".
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_LEASE_TTL_S = 2
MAX_LEASE_TTL_S = 30 * 24 * 3600
MAX_LEASES = 100_000
MAX_KEYS_PER_LEASE = 4096
MAX_LEASE_ID = 2**63 - 1
NO_LEASE = 0


# ---------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class LeaseGrantOp:
    """Grant a lease of ``ttl`` seconds: LeaseGrantOk (its new id) or LeaseLimitResult."""

    ttl: int
    client_id: str
    request_id: int
    acked_below: int


@dataclass(frozen=True, slots=True)
class LeaseRevokeOp:
    """Revoke lease ``lease_id`` and delete its keys: DeleteOk or LeaseNotFoundResult."""

    lease_id: int
    client_id: str
    request_id: int
    acked_below: int


@dataclass(frozen=True, slots=True)
class LeaseKeepaliveOp:
    """Renew lease ``lease_id``: LeaseKeepaliveOk or LeaseNotFoundResult.

    Through the log on purpose: the leader restarts the lease's deadline when
    it applies this, and only a committed renewal counts (see the keeper).
    """

    lease_id: int
    client_id: str
    request_id: int
    acked_below: int


@dataclass(frozen=True, slots=True)
class LeaseTtlOp:
    """Read lease ``lease_id`` (and its keys if ``keys``): LeaseTtlResult or LeaseNotFoundResult."""

    lease_id: int
    keys: bool
    client_id: str
    request_id: int
    acked_below: int


@dataclass(frozen=True, slots=True)
class LeaseExpireOp:
    """The leader's: revoke ``lease_id`` if it still has ``renewals`` renewals.

    DeleteOk if it expired it; LeaseKeepaliveOk if a keepalive applied since
    the leader decided (nothing changes); LeaseNotFoundResult if it is gone.
    """

    lease_id: int
    renewals: int
    client_id: str
    request_id: int
    acked_below: int


LeaseOp = LeaseGrantOp | LeaseRevokeOp | LeaseKeepaliveOp | LeaseTtlOp | LeaseExpireOp
LEASE_WRITE_OPS = (LeaseGrantOp, LeaseRevokeOp, LeaseKeepaliveOp, LeaseExpireOp)


# ----------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class LeaseGrantOk:
    """A lease was granted: its id and TTL in seconds."""

    lease_id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseKeepaliveOk:
    """The lease was renewed for ``ttl`` seconds from when the leader applied the keepalive."""

    lease_id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseTtlResult:
    """A lease: its granted TTL, the seconds left as the leader sees them, its keys.

    ``remaining_s`` is -1.0 where no leader's clock filled it in (it is a
    leader's view, not replicated state); ``keys`` are sorted, empty unless
    asked for.
    """

    lease_id: int
    granted_ttl: int
    remaining_s: float
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LeaseNotFoundResult:
    """No live lease has this id (never granted, revoked or expired); nothing applied."""

    lease_id: int


@dataclass(frozen=True, slots=True)
class LeaseLimitResult:
    """A lease bound (MAX_LEASES, MAX_KEYS_PER_LEASE) would be passed; nothing applied."""

    message: str


# ------------------------------------------------------------------- validation


def check_ttl_error(ttl: object) -> str | None:
    """Why ``ttl`` is not a lease TTL (an int, not bool, in the range), or None."""
    if type(ttl) is not int or not MIN_LEASE_TTL_S <= ttl <= MAX_LEASE_TTL_S:
        return f"ttl must be an int of seconds in {MIN_LEASE_TTL_S}..{MAX_LEASE_TTL_S}, not {ttl!r}"
    return None


def lease_id_error(lease_id: object, *, allow_none: bool = False) -> str | None:
    """Why ``lease_id`` is not a lease id (0, "no lease", only if ``allow_none``), or None."""
    low = 0 if allow_none else 1
    if type(lease_id) is not int or not low <= lease_id <= MAX_LEASE_ID:
        return f"lease id must be an int in {low}..{MAX_LEASE_ID}, not {lease_id!r}"
    return None


def lease_op_error(op: LeaseOp) -> str | None:
    """Why the lease fields of ``op`` are out of bounds, or None (the session fields are
    kv_protocol's to check)."""
    if isinstance(op, LeaseGrantOp):
        return check_ttl_error(op.ttl)
    why = lease_id_error(op.lease_id)
    if why is not None:
        return why
    if isinstance(op, LeaseTtlOp) and type(op.keys) is not bool:
        return f"keys must be bool, not {op.keys!r}"
    if isinstance(op, LeaseExpireOp) and (type(op.renewals) is not int or op.renewals < 0):
        return f"renewals must be an int >= 0, not {op.renewals!r}"
    return None
