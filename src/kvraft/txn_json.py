"""A transaction described in JSON, as ``kvraft txn`` reads it on stdin.

The format (``docs/data-model.md``) is the Python API's, spelled as JSON
objects: ``{"compare": [...], "success": [...], "failure": [...]}``, every
part optional. A compare is ``{"key", "target", "op", "value"}`` (the fields
of :class:`~kvraft.kv_protocol.Compare`); an operation names its kind in
``"op"`` (``put``, ``set``, ``delete``, ``delete_range``, ``get``, ``range``)
beside the fields of its ``Txn*`` class, and the two ranges take ``prefix``
instead of ``start``/``end``. Unknown fields are refused rather than
ignored, so a typo cannot silently turn into a different transaction. Types
and bounds are ``check_op``'s, checked by the client before sending.
"""

from __future__ import annotations

import json
from typing import Any

from kvraft.kv_protocol import (
    Compare,
    TxnDelete,
    TxnDeleteRange,
    TxnGet,
    TxnPut,
    TxnRange,
    TxnRequest,
    TxnSet,
    prefix_end,
)

# Per operation kind: its class, required fields, optional fields.
_OPS: dict[str, tuple[type[Any], tuple[str, ...], tuple[str, ...]]] = {
    "put": (TxnPut, ("key", "value", "version"), ()),
    "set": (TxnSet, ("key", "value"), ()),
    "delete": (TxnDelete, ("key",), ("version",)),
    "delete_range": (TxnDeleteRange, (), ("start", "end", "prefix")),
    "get": (TxnGet, ("key",), ()),
    "range": (TxnRange, (), ("start", "end", "prefix", "limit", "keys_only")),
}


class TxnJsonError(ValueError):
    """JSON that does not describe a transaction (the user's mistake: a usage error)."""


def parse_txn(text: str) -> tuple[list[Compare], list[TxnRequest], list[TxnRequest]]:
    """The compares and the two branches that ``text`` describes; TxnJsonError otherwise."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TxnJsonError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TxnJsonError("a transaction is a JSON object")
    unknown = set(doc) - {"compare", "success", "failure"}
    if unknown:
        raise TxnJsonError(f"unknown field(s) {', '.join(sorted(unknown))}")
    compares = [_compare(i, c) for i, c in enumerate(_list(doc, "compare"))]
    success = [_op("success", i, o) for i, o in enumerate(_list(doc, "success"))]
    failure = [_op("failure", i, o) for i, o in enumerate(_list(doc, "failure"))]
    return compares, success, failure


def _list(doc: dict[str, Any], name: str) -> list[Any]:
    value = doc.get(name, [])
    if not isinstance(value, list):
        raise TxnJsonError(f"{name} must be a list")
    return value


def _compare(i: int, item: Any) -> Compare:
    if not isinstance(item, dict) or set(item) != {"key", "target", "op", "value"}:
        raise TxnJsonError(f"compare[{i}] must be an object with key, target, op and value")
    return Compare(item["key"], item["target"], item["op"], item["value"])


def _op(branch: str, i: int, item: Any) -> TxnRequest:
    where = f"{branch}[{i}]"
    if not isinstance(item, dict) or item.get("op") not in _OPS:
        raise TxnJsonError(f"{where} must be an object with op one of {', '.join(_OPS)}")
    cls, required, optional = _OPS[item["op"]]
    fields = {k: v for k, v in item.items() if k != "op"}
    missing = [f for f in required if f not in fields]
    extra = set(fields) - set(required) - set(optional)
    if missing or extra:
        raise TxnJsonError(
            f"{where} ({item['op']}): missing {missing or 'nothing'},"
            f" unknown {sorted(extra) or 'none'}"
        )
    if "prefix" in fields:
        if "start" in fields or "end" in fields:
            raise TxnJsonError(f"{where}: give prefix, or start and end, not both")
        prefix = fields.pop("prefix")
        if not isinstance(prefix, str):
            raise TxnJsonError(f"{where}: prefix must be a string")
        fields["start"], fields["end"] = prefix, prefix_end(prefix)
    elif cls in (TxnRange, TxnDeleteRange) and "start" not in fields:
        raise TxnJsonError(f"{where}: give prefix, or start (and end)")
    result: TxnRequest = cls(**fields)
    return result
