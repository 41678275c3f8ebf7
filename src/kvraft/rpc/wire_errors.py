"""How an error crosses the wire: an exception on one side, ``[code, message]`` between.

A handler raises; the server's reply carries ``(code, message)``; the caller
raises again. The service's own errors (``kvraft.errors.WIRE_ERRORS``) travel
by class name and come back as themselves, so ``NoKey`` on the server is
``NoKey`` at the client. Everything else has a code of the RPC layer's
(``unknown_method``, ``bad_request``, ``internal``, ``reply_too_large``) and
comes back as :class:`~kvraft.errors.RemoteError`: the caller learns what
went wrong, never a traceback. Pure: no I/O.
"""

from __future__ import annotations

from kvraft.errors import WIRE_ERRORS, KVError, ProtocolError, RemoteError


class UnknownMethod(Exception):
    """Raised by a handler for a method it does not serve."""


def error_of(exc: BaseException) -> tuple[str, str]:
    """The wire ``[code, message]`` for an exception a handler raised."""
    if isinstance(exc, KVError) and type(exc).__name__ in WIRE_ERRORS:
        return (type(exc).__name__, str(exc))
    if isinstance(exc, RemoteError):
        return (exc.code, exc.message)
    if isinstance(exc, UnknownMethod):
        return ("unknown_method", str(exc))
    if isinstance(exc, ProtocolError):
        return ("bad_request", str(exc))
    return ("internal", f"{type(exc).__name__}: {exc}")


def exception_of(error: tuple[str, str]) -> Exception:
    """The local exception for a wire error (inverse of :func:`error_of`)."""
    code, message = error
    cls = WIRE_ERRORS.get(code)
    if cls is not None:
        return cls(message)
    return RemoteError(code, message)
