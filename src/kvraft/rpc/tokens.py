"""Client tokens and roles: who may call what. Pure, no I/O.

``--auth-token-file`` holds one token per line with its role, ``TOKEN ROLE``
(``#`` starts a comment; blank lines are skipped). Roles are ordered:
``read`` (reads) < ``readwrite`` (reads and writes) < ``admin`` (everything,
``status`` and the test hooks included). A client presents its token once per
connection, as the connection's first frame (the ``token`` handshake step,
:mod:`kvraft.rpc.codec`), and the server answers it with the role's name, or
None for a token it does not know (the client then raises ``Unauthorized``).
Every request on the connection is checked against the role before anything
runs. A server without a token file lets
every client do everything (the role of an unauthenticated caller is then
``admin``), as before tokens existed.

Tokens are kept only as SHA-256 digests, so a lookup takes the same time
whichever bytes match, and a dump of the table shows no token. A token is
16 to 256 printable ASCII characters without spaces or ``#`` (at least 16, so it
cannot be guessed; at most 256, so a line stays a line).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 256
# The token handshake step's name on the wire.
TOKEN_STEP = "token"


class Role(enum.IntEnum):
    """What a token allows, each role everything the one below allows and more."""

    READ = 1
    READWRITE = 2
    ADMIN = 3


ROLE_NAMES = {"read": Role.READ, "readwrite": Role.READWRITE, "admin": Role.ADMIN}


def check_token(token: str) -> str:
    """``token`` if well formed; ValueError (never showing it) otherwise."""
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise ValueError(
            f"a token is {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} characters; this one has"
            f" {len(token)}"
        )
    if not (token.isascii() and token.isprintable()) or any(c.isspace() or c == "#" for c in token):
        raise ValueError("a token is printable ASCII without spaces or '#'")
    return token


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenTable:
    """Token digests and their roles; ``method_roles`` says what each method needs.

    A method not in ``method_roles`` needs ``admin``: a method added later is
    closed until someone decides who may call it.
    """

    roles_by_digest: Mapping[bytes, Role]
    method_roles: Mapping[str, Role]

    def __repr__(self) -> str:  # the digests are not secrets, but a count says enough
        return f"TokenTable({len(self.roles_by_digest)} tokens)"

    def role_of(self, token: object) -> Role | None:
        """The token's role, or None for a token not in the table (or not a token at all)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            return None
        return self.roles_by_digest.get(digest(token))

    def needs(self, method: str) -> Role:
        return self.method_roles.get(method, Role.ADMIN)


def parse_token_file(text: str, method_roles: Mapping[str, Role]) -> TokenTable:
    """The table in an ``--auth-token-file``'s text; ValueError naming the line, never the token."""
    roles: dict[bytes, Role] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"line {number}: expected TOKEN ROLE")
        token, role_name = parts
        role = ROLE_NAMES.get(role_name)
        if role is None:
            names = ", ".join(ROLE_NAMES)
            shown = f" {role_name!r}" if len(role_name) < MIN_TOKEN_CHARS else ""  # maybe a token
            raise ValueError(f"line {number}: unknown role{shown} (one of {names})")
        try:
            check_token(token)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        key = digest(token)
        if key in roles:
            raise ValueError(f"line {number}: the same token appears twice")
        roles[key] = role
    if not roles:
        raise ValueError("no tokens in the file")
    return TokenTable(roles, dict(method_roles))
