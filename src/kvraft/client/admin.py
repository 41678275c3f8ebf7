"""Operator calls: the status of every node, reachable or not; a leadership transfer."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvraft.errors import RpcError, Unauthorized, Unavailable
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
    if not leaders:
        raise Unavailable(f"no leader among the {len(reachable)} nodes that answered")
    leader = leaders[0]
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
