"""Token files and scope lookup, without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas.errors import UsageError
from cas.server.tokens import Scope, TokenTable
from cas_cli.commands.serve import parse_listen

tokens = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#"),
    min_size=16,
    max_size=40,
)


def test_token_file_with_comments_and_blank_lines(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(
        "# CI runners\nwrite  wwwwwwwwwwwwwwwwwwww  # create only\n\nADMIN aaaaaaaaaaaaaaaaaaaa\n"
    )
    table = TokenTable.load(path)
    assert table.scope_of("wwwwwwwwwwwwwwwwwwww") is Scope.WRITE
    assert table.scope_of("aaaaaaaaaaaaaaaaaaaa") is Scope.ADMIN
    assert table.scope_of("wwwwwwwwwwwwwwwwwwwx") is None
    assert table.scope_of("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no tokens"),
        ("# only a comment\n", "holds no tokens"),
        ("write\n", ":1: expected 'SCOPE TOKEN', got 1 fields"),
        ("read a b c d e f g h i j k l m n o p\n", ":1: expected 'SCOPE TOKEN'"),
        ("\nroot aaaaaaaaaaaaaaaaaaaa\n", ":2: unknown scope 'root'"),
        ("read short\n", ":1: token shorter than 16"),
    ],
)
def test_bad_token_files_name_the_line(tmp_path, text, message):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        TokenTable.load(path)


def test_unreadable_token_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read token file"):
        TokenTable.load(tmp_path / "absent")


@given(st.dictionaries(tokens, st.sampled_from(list(Scope)), min_size=1, max_size=5), tokens)
def test_lookup_finds_exactly_the_configured_tokens(configured, guess):
    table = TokenTable(tuple((t.encode(), s) for t, s in configured.items()))
    for token, scope in configured.items():
        assert table.scope_of(token) is scope
        assert table.scope_of(token[:-1]) is configured.get(token[:-1])
    assert table.scope_of(guess) is configured.get(guess)


def test_a_token_listed_twice_gets_its_highest_scope():
    table = TokenTable(((b"t" * 16, Scope.READ), (b"t" * 16, Scope.ADMIN)))
    assert table.scope_of("t" * 16) is Scope.ADMIN


def test_scopes_are_ordered():
    assert Scope.READ < Scope.WRITE < Scope.ADMIN


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8750", ("127.0.0.1", 8750)), ("[::1]:0", ("::1", 0)), ("host:1", ("host", 1))],
)
def test_listen_addresses(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8750", ":8750", "host:", "host:port", "host:70000"])
def test_bad_listen_addresses(text):
    with pytest.raises(UsageError, match="--listen"):
        parse_listen(text)
