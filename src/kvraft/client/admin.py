"""Operator queries: the status of every node, reachable or not."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import uuid
from collections.abc import Sequence
from typing import Any

from kvraft.errors import RpcError, Unauthorized
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
