"""Client tokens' pure half: the ``--auth-token-file`` parser and the table it builds.

Every error names the line and never shows a token: a token file's errors end
up in logs and terminals.
"""

from __future__ import annotations

import pytest

from kvraft.rpc.tokens import (
    MAX_TOKEN_CHARS,
    MIN_TOKEN_CHARS,
    TOKEN_STEP,
    Role,
    TokenTable,
    check_token,
    digest,
    parse_token_file,
)

READ_TOKEN = "read-token-0123456789"
WRITE_TOKEN = "write-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
METHODS = {"get": Role.READ, "put": Role.READWRITE}


def table_of(text: str) -> TokenTable:
    return parse_token_file(text, METHODS)


def refusal(text: str) -> str:
    """The ValueError message parsing ``text`` gives."""
    with pytest.raises(ValueError) as info:
        table_of(text)
    return str(info.value)


def test_the_three_roles() -> None:
    table = table_of(f"{READ_TOKEN} read\n{WRITE_TOKEN} readwrite\n{ADMIN_TOKEN} admin\n")
    assert table.role_of(READ_TOKEN) is Role.READ
    assert table.role_of(WRITE_TOKEN) is Role.READWRITE
    assert table.role_of(ADMIN_TOKEN) is Role.ADMIN
    assert table.role_of("not-a-token-in-this-table") is None
    assert Role.READ < Role.READWRITE < Role.ADMIN


def test_comments_and_blank_lines_are_skipped() -> None:
    text = (
        "# the cluster's tokens\n"
        "\n"
        f"   {READ_TOKEN}    read   # the dashboard\n"
        "\t\n"
        "  # indented comment\n"
        f"{ADMIN_TOKEN}\tadmin\n"
    )
    table = table_of(text)
    assert table.role_of(READ_TOKEN) is Role.READ
    assert table.role_of(ADMIN_TOKEN) is Role.ADMIN
    assert len(table.roles_by_digest) == 2


def test_windows_line_endings_are_lines() -> None:
    table = table_of(f"{READ_TOKEN} read\r\n{ADMIN_TOKEN} admin\r\n")
    assert table.role_of(READ_TOKEN) is Role.READ
    assert table.role_of(ADMIN_TOKEN) is Role.ADMIN


@pytest.mark.parametrize(
    ("bad_line", "says"),
    [
        (f"{WRITE_TOKEN}", "expected TOKEN ROLE"),
        (f"{WRITE_TOKEN} read extra", "expected TOKEN ROLE"),
        (f"{WRITE_TOKEN} superuser", "unknown role 'superuser'"),
        (f"{WRITE_TOKEN} READ", "unknown role 'READ'"),
        (f"{READ_TOKEN} admin", "the same token appears twice"),
    ],
    ids=["one-field", "three-fields", "unknown-role", "role-case", "duplicate"],
)
def test_a_bad_line_is_named_by_number_without_its_token(bad_line: str, says: str) -> None:
    text = f"# header\n\n{READ_TOKEN} read\n{bad_line}\n{ADMIN_TOKEN} admin\n"
    message = refusal(text)
    assert message.startswith("line 4: "), message
    assert says in message
    for token in (READ_TOKEN, WRITE_TOKEN, ADMIN_TOKEN):
        assert token not in message


def test_a_line_with_role_and_token_swapped_does_not_show_the_token() -> None:
    """``admin TOKEN`` (columns swapped) is the likeliest mistake; the token is the 'role'.

    The error names the line but must not echo the token as an unknown role name.
    """
    message = refusal(f"{READ_TOKEN} read\nadmin {ADMIN_TOKEN}\n")
    assert message.startswith("line 2: "), message
    assert "unknown role" in message
    assert ADMIN_TOKEN not in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # and another\n"])
def test_a_file_without_tokens_is_refused(text: str) -> None:
    assert "no tokens" in refusal(text)


@pytest.mark.parametrize(
    ("length", "ok"),
    [
        (MIN_TOKEN_CHARS - 1, False),
        (MIN_TOKEN_CHARS, True),
        (MAX_TOKEN_CHARS, True),
        (MAX_TOKEN_CHARS + 1, False),
    ],
)
def test_token_length_bounds(length: int, ok: bool) -> None:
    assert (MIN_TOKEN_CHARS, MAX_TOKEN_CHARS) == (16, 256)
    token = "k" * length
    text = f"# tokens\n{token} readwrite\n"
    if ok:
        assert check_token(token) == token
        assert table_of(text).role_of(token) is Role.READWRITE
    else:
        with pytest.raises(ValueError, match=f"this one has {length}"):
            check_token(token)
        message = refusal(text)
        assert message.startswith("line 2: ") and f"this one has {length}" in message
        assert token not in message


@pytest.mark.parametrize(
    "token",
    [
        "has a space in it 0123",
        "has\ta-tab-in-it-0123",
        "has#a-hash-in-it-0123",
        "non-ascii-tökén-0123456",
        "control-char-\x07-0123456",
    ],
    ids=["space", "tab", "hash", "non-ascii", "control"],
)
def test_spaces_hashes_and_unprintable_characters_are_refused(token: str) -> None:
    with pytest.raises(ValueError) as info:
        check_token(token)
    assert token not in str(info.value)
    message = refusal(f"{READ_TOKEN} read\n{token} admin\n")
    assert message.startswith("line 2: "), message
    assert token not in message
    # Whatever part of it the parser saw as a token is not shown either.
    assert "0123" not in message


def test_every_printable_ascii_character_but_space_and_hash_is_allowed() -> None:
    allowed = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "#")
    table = table_of(f"{allowed} read\n")
    assert table.role_of(allowed) is Role.READ


@pytest.mark.parametrize(
    "value",
    [None, 42, b"read-token-0123456789", ["read-token-0123456789"], ("read-token-0123456789",)],
    ids=["none", "int", "bytes", "list", "tuple"],
)
def test_role_of_something_not_a_str_is_none(value: object) -> None:
    assert table_of(f"{READ_TOKEN} read\n").role_of(value) is None


def test_role_of_a_str_that_utf8_cannot_encode_is_none() -> None:
    """Tokens are ASCII, so no such str is one: None, not UnicodeEncodeError."""
    table = table_of(f"{READ_TOKEN} read\n")
    assert table.role_of("\ud800" * MIN_TOKEN_CHARS) is None
    assert table.role_of("tökén-not-ascii-0123") is None


def test_role_of_an_oversize_token_is_none_without_hashing_it() -> None:
    table = table_of(f"{'k' * MAX_TOKEN_CHARS} admin\n")
    assert table.role_of("k" * MAX_TOKEN_CHARS) is Role.ADMIN
    # Even a table that somehow held an oversize token's digest answers None for it.
    huge = "k" * (MAX_TOKEN_CHARS + 1)
    rigged = TokenTable({digest(huge): Role.ADMIN}, METHODS)
    assert rigged.role_of(huge) is None
    assert rigged.role_of("k" * 10_000_000) is None


def test_needs_defaults_to_admin() -> None:
    table = table_of(f"{READ_TOKEN} read\n")
    assert table.needs("get") is Role.READ
    assert table.needs("put") is Role.READWRITE
    assert table.needs("status") is Role.ADMIN
    assert table.needs("a_method_added_later") is Role.ADMIN
    assert table.needs("") is Role.ADMIN


def test_the_method_roles_are_copied() -> None:
    methods = dict(METHODS)
    table = parse_token_file(f"{READ_TOKEN} read\n", methods)
    methods["status"] = Role.READ
    assert table.needs("status") is Role.ADMIN


def test_repr_shows_no_digest_and_no_token() -> None:
    table = table_of(f"{READ_TOKEN} read\n{ADMIN_TOKEN} admin\n")
    for text in (repr(table), str(table), f"{table!r}", f"{table}"):
        assert text == "TokenTable(2 tokens)"
        for token in (READ_TOKEN, ADMIN_TOKEN):
            assert token not in text
            assert digest(token).hex() not in text
            assert repr(digest(token)) not in text


def test_the_table_keeps_only_digests() -> None:
    table = table_of(f"{READ_TOKEN} read\n")
    assert list(table.roles_by_digest) == [digest(READ_TOKEN)]
    assert all(len(key) == 32 for key in table.roles_by_digest)


def test_the_token_step_name() -> None:
    assert TOKEN_STEP == "token"
