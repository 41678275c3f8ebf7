"""What every ``kvraft`` subcommand ends with: the exit codes and the one-line failure.

Its own module so that the command modules (:mod:`kvraft.cli_servers`,
:mod:`kvraft.cli_clients`) and the group that gathers them (:mod:`kvraft.cli`)
share them without importing each other.
"""

from __future__ import annotations

import contextlib
import ssl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import click

from kvraft.errors import RemoteError, RpcError, Unauthorized, Unavailable, one_line

EXIT_OK, EXIT_OP_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> NoReturn:
    """Print ``kvraft: message`` on stderr and exit with ``code``."""
    click.echo(f"kvraft: {one_line(message)}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def leader_call_failures(refused: Callable[[RemoteError], str]) -> Iterator[None]:
    """An operator's call to the leader, its failures as the one-line exits: no node or
    no leader answering (3), a token without the role (1), the leader's refusal
    (1, ``refused(error)`` says it), the leader going silent mid-call (3)."""
    try:
        yield
    except Unavailable as exc:
        fail(f"cluster unavailable: {exc}", EXIT_UNAVAILABLE)
    except Unauthorized as exc:
        fail(f"Unauthorized: {exc}", EXIT_OP_ERROR)
    except RemoteError as exc:
        fail(refused(exc), EXIT_OP_ERROR)
    except RpcError as exc:
        fail(f"cluster unavailable: the leader did not answer: {exc}", EXIT_UNAVAILABLE)


@dataclass(frozen=True)
class Credentials:
    """What a command's clients present: ``--token`` and the TLS context of ``--cacert``..."""

    token: str | None = None
    ssl: ssl.SSLContext | None = None


def credentials(ctx: click.Context | None = None) -> Credentials:
    """The top-level ``--token/--cacert/--cert/--key`` (or ``$KVRAFT_TOKEN``...); usage errors."""
    from kvraft.rpc.tls import client_tls_context
    from kvraft.rpc.tokens import check_token

    params = (ctx or click.get_current_context()).find_root().params
    token, cacert, cert, key = (params.get(n) for n in ("token", "cacert", "cert", "key"))
    if token is not None:
        try:
            check_token(token)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--token") from None
    context = None
    if cacert is not None or cert is not None or key is not None:
        try:
            context = client_tls_context(cacert=cacert, cert=cert, key=key)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--cacert/--cert/--key") from None
    return Credentials(token=token, ssl=context)
