"""Operator calls: the status of every node, reachable or not; a leadership transfer; a backup."""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvraft.errors import RemoteError, RpcError, Unauthorized, Unavailable
from kvraft.rpc.client import RpcClient
from kvraft.rpc.codec import client_sender


async def fetch_statuses_async(
    servers: Sequence[str],
    timeout: float,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> list[dict[str, Any]]:
    """One row per server: its ``status`` reply plus ``reachable``, or why it is not.

    ``status`` needs an ``admin`` token on servers with tokens; a refusal is
    that row's error.
    """
    sender = client_sender("admin-" + uuid.uuid4().hex[:8])

    async def one(address: str) -> dict[str, Any]:
        rpc = RpcClient(address, sender, connect_timeout_s=timeout, ssl=ssl, token=token)
        try:
            row = dict(await rpc.call("status", None, timeout))
            row["address"] = address
            row["reachable"] = True
            return row
        except RpcError as exc:
            return {"address": address, "reachable": False, "error": str(exc)}
        except Unauthorized as exc:
            error = f"Unauthorized: {exc}"
            return {"address": address, "reachable": False, "refused": True, "error": error}
        finally:
            rpc.close()

    return list(await asyncio.gather(*(one(a) for a in servers)))


def fetch_statuses(
    servers: Sequence[str],
    timeout: float,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> list[dict[str, Any]]:
    return asyncio.run(fetch_statuses_async(servers, timeout, token=token, ssl=ssl))


@dataclass(frozen=True)
class TransferOutcome:
    """A completed ``leader.transfer``: who led, who leads now, how long it took.

    ``elapsed_s`` is the old leader's measure, from its first refused proposal
    to its first message from the new leader; 0 when ``target`` already led.
    """

    old_leader: int
    new_leader: int
    elapsed_s: float


async def transfer_leadership_async(
    servers: Sequence[str],
    target: int,
    timeout: float,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> TransferOutcome:
    """Ask the current leader (found by ``status``) to hand leadership to node ``target``.

    Raises Unavailable when no node answers or none leads; Unauthorized when
    the token may not (``admin`` needed); RemoteError ``transfer_refused`` (not
    leader any more, ``target`` not a peer) or ``transfer_failed`` (the target
    did not take over within an election timeout); an RpcError if the leader
    did not answer within ``timeout``.
    """
    leader = await _leader_row(servers, timeout, token, ssl)
    if leader.get("id") == target:
        return TransferOutcome(target, target, 0.0)
    sender = client_sender("admin-" + uuid.uuid4().hex[:8])
    rpc = RpcClient(str(leader["address"]), sender, connect_timeout_s=timeout, ssl=ssl, token=token)
    try:
        result = await rpc.call("leader.transfer", target, timeout)
    finally:
        rpc.close()
    return TransferOutcome(int(result["from"]), int(result["to"]), float(result["elapsed_s"]))


def transfer_leadership(
    servers: Sequence[str],
    target: int,
    timeout: float,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> TransferOutcome:
    return asyncio.run(transfer_leadership_async(servers, target, timeout, token=token, ssl=ssl))


# What a snapshot.read reply's frame holds besides the chunk (the server's
# CHUNK_OVERHEAD_BYTES): the client asks for chunks its own frame limit takes.
SNAPSHOT_READ_OVERHEAD_BYTES = 4096


@dataclass(frozen=True)
class FetchedSnapshot:
    """A backup snapshot as the leader handed it out: its data and what it is the state as of."""

    cluster_id: str
    index: int
    term: int
    revision: int
    data: bytes
    leader: int


async def fetch_snapshot_async(
    servers: Sequence[str],
    timeout: float,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
    max_frame_bytes: int = 16 * 1024 * 1024,
) -> FetchedSnapshot:
    """A consistent snapshot of the leader's state machine (``snapshot.open/read/close``).

    Raises Unavailable when no node answers or none leads, Unauthorized
    without an admin token, RemoteError (``busy``: too many backups open on
    the leader; ``not_leader``: it lost leadership; ``snapshot_unknown``: it
    expired), an RpcError if the leader stops answering, ValueError if the
    bytes received do not match the SHA-256 the leader gave.
    """
    import hashlib

    rows = await fetch_statuses_async(servers, timeout, token=token, ssl=ssl)
    reachable = [row for row in rows if row.get("reachable")]
    refused = [row for row in rows if str(row.get("error", "")).startswith("Unauthorized")]
    if not reachable and refused:
        raise Unauthorized(str(refused[0]["error"]).removeprefix("Unauthorized: "))
    leaders = sorted(
        (row for row in reachable if row.get("role") == "leader"),
        key=lambda row: int(row.get("term", 0)),
        reverse=True,
    )
    if not leaders:
        raise Unavailable(
            f"no leader among the {len(reachable)} of {len(servers)} nodes that answered"
        )
    leader = leaders[0]
    sender = client_sender("admin-" + uuid.uuid4().hex[:8])
    rpc = RpcClient(
        str(leader["address"]),
        sender,
        connect_timeout_s=timeout,
        ssl=ssl,
        token=token,
        max_frame_bytes=max_frame_bytes,
    )
    want = max(1, max_frame_bytes - SNAPSHOT_READ_OVERHEAD_BYTES)
    try:
        meta = await rpc.call("snapshot.open", None, timeout)
        sid, size = str(meta["id"]), int(meta["size"])
        chunks: list[bytes] = []
        received = 0
        try:
            while received < size:
                chunk = await rpc.call("snapshot.read", [sid, received, want], timeout)
                if not chunk:
                    raise ValueError(f"snapshot ended at {received} of {size} bytes")
                chunks.append(bytes(chunk))
                received += len(chunk)
        finally:
            with contextlib.suppress(RpcError):  # else it expires on the leader
                await rpc.call("snapshot.close", sid, timeout)
    finally:
        rpc.close()
    data = b"".join(chunks)
    if len(data) != size or hashlib.sha256(data).digest() != bytes(meta["sha256"]):
        raise ValueError("the snapshot received does not match the leader's SHA-256")
    return FetchedSnapshot(
        str(meta["cluster_id"]),
        int(meta["index"]),
        int(meta["term"]),
        int(meta["revision"]),
        data,
        int(leader.get("id", -1)),
    )


def fetch_snapshot(
    servers: Sequence[str],
    timeout: float,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> FetchedSnapshot:
    return asyncio.run(fetch_snapshot_async(servers, timeout, token=token, ssl=ssl))


# ---------------------------------------------------------------- membership


async def _leader_row(
    servers: Sequence[str], timeout: float, token: str | None, ssl: ssl_module.SSLContext | None
) -> dict[str, Any]:
    """The status row of the leader of the highest term among ``servers``."""
    rows = await fetch_statuses_async(servers, timeout, token=token, ssl=ssl)
    reachable = [row for row in rows if row.get("reachable")]
    refused = [row for row in rows if str(row.get("error", "")).startswith("Unauthorized")]
    if not reachable and refused:
        raise Unauthorized(str(refused[0]["error"]).removeprefix("Unauthorized: "))
    if not reachable:
        raise Unavailable(f"no node of {', '.join(servers)} answered within {timeout:g}s")
    leaders = sorted(
        (row for row in reachable if row.get("role") == "leader"),
        key=lambda row: int(row.get("term", 0)),
        reverse=True,
    )
    if leaders:
        return leaders[0]
    # None of ``servers`` leads (say --join was given one follower): ask one that
    # knows a leader where that leader advertises itself (its configuration).
    for row in sorted(reachable, key=lambda r: int(r.get("term", 0)), reverse=True):
        found = await _advertised_leader(row, timeout, token, ssl)
        if found is not None:
            return found
    raise Unavailable(f"no leader among the {len(reachable)} nodes that answered")


async def _advertised_leader(
    row: dict[str, Any], timeout: float, token: str | None, ssl: ssl_module.SSLContext | None
) -> dict[str, Any] | None:
    """The status row of the leader that follower ``row`` names, at its advertised address."""
    leader_id = row.get("leader_id")
    if leader_id is None:
        return None
    sender = client_sender("admin-" + uuid.uuid4().hex[:8])
    rpc = RpcClient(str(row["address"]), sender, connect_timeout_s=timeout, ssl=ssl, token=token)
    try:
        listing = dict(await rpc.call("member.list", None, timeout))
    except (RpcError, RemoteError, Unauthorized):
        return None
    finally:
        rpc.close()
    address = next((m["address"] for m in listing["members"] if m["id"] == leader_id), "")
    if not address:
        return None
    (found,) = await fetch_statuses_async([str(address)], timeout, token=token, ssl=ssl)
    return found if found.get("reachable") and found.get("role") == "leader" else None


async def member_call_async(
    servers: Sequence[str],
    method: str,
    args: Any,
    timeout: float,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> dict[str, Any]:
    """Call ``member.*`` ``method`` at the leader (found by ``status``); its reply.

    Raises Unavailable when no node answers or none leads; Unauthorized
    without an ``admin`` token; RemoteError ``member_refused`` (a change that
    may not be made now, and why: another in flight, a learner too far
    behind, not a member) or ``member_failed`` (not committed in time).
    """
    leader = await _leader_row(servers, timeout, token, ssl)
    sender = client_sender("admin-" + uuid.uuid4().hex[:8])
    rpc = RpcClient(str(leader["address"]), sender, connect_timeout_s=timeout, ssl=ssl, token=token)
    try:
        return dict(await rpc.call(method, args, timeout))
    finally:
        rpc.close()


def member_call(
    servers: Sequence[str],
    method: str,
    args: Any,
    timeout: float,
    *,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> dict[str, Any]:
    return asyncio.run(member_call_async(servers, method, args, timeout, token=token, ssl=ssl))
