"""Fuzz the small text parsers: ref names, object ids, `ID|REF|PREFIX` resolution, token files.

Names come from the command line (any bytes, surrogate-escaped by Python),
from URLs and from token files an operator wrote. Each is either accepted
with its documented shape or refused with `UsageError` (exit code 2) or,
for a well-formed name that names nothing, `ObjectNotFound` (exit code 3);
never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cas.errors import ObjectNotFound, UsageError
from cas.ids import ObjectId, is_object_id
from cas.repo import Repository
from cas.server.tokens import MIN_TOKEN_CHARS, Scope, TokenTable
from cas.store.base import MAX_REF_BYTES, Kind, validate_ref_name
from cas.store.local import LocalStore
from tests.fuzz import bounded, fuzz_settings

ROOT = Path(__file__).parents[2]
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@=-]*")

ref_alphabet = st.sampled_from([*"aZ09._+@=-/", "..", "\0", "\n", "é", "\udcff", " ", "%2f"])
argv_text = st.binary(max_size=80).map(os.fsdecode)  # what sys.argv holds for arbitrary bytes
names = st.one_of(
    st.text(max_size=40),
    argv_text,
    st.lists(ref_alphabet, max_size=30).map("".join),
    st.text(alphabet="ab/", min_size=500, max_size=530),
)


def documented_ref(name: str) -> bool:
    raw = name.encode("utf-8", "surrogatepass")
    return 0 < len(raw) <= MAX_REF_BYTES and all(_SEGMENT.fullmatch(s) for s in name.split("/"))


@fuzz_settings()
@given(name=names)
@example(name="\udcff")  # a non-UTF-8 argv byte: was UnicodeEncodeError, a traceback in the CLI
@example(name="a/\udcffb")
def test_ref_names_are_accepted_exactly_as_documented(name):
    try:
        assert validate_ref_name(name) == name
    except UsageError:
        assert not documented_ref(name)
    else:
        assert documented_ref(name)
        assert not any(s in (".", "..") or s.startswith(("-", ".")) for s in name.split("/"))


@fuzz_settings()
@given(text=st.one_of(names, st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=68)))
def test_object_ids_parse_only_from_64_lower_hex(text):
    try:
        parsed = ObjectId.parse(text)
    except UsageError:
        assert not is_object_id(text)
    else:
        assert str(parsed) == text and is_object_id(text)


# ---------------------------------------------------------------- ID | REF | PREFIX

MANIFESTS = [
    ObjectId(bytes.fromhex("ab12cd34" + "0" * 56)),
    ObjectId(bytes.fromhex("ab12cd35" + "1" * 56)),
]
REFS = {"main": MANIFESTS[0], "ab12cd35": MANIFESTS[0], "ci/build-1": MANIFESTS[1]}


@pytest.fixture(scope="module")
def resolve_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("resolve") / "store"

    async def plant():
        store = LocalStore(root, fsync=False)
        for object_id in MANIFESTS:
            await store.put_if_absent(Kind.MANIFEST, object_id, b"not parsed by resolve")
        for name, target in REFS.items():
            await store.create_ref(name, target)
        await store.aclose()

    asyncio.run(plant())
    return root


def expected_resolution(name: str) -> ObjectId | type[Exception]:
    if is_object_id(name):
        return ObjectId.parse(name)
    if not documented_ref(name):
        return UsageError
    if any(len(s.encode()) > 255 for s in name.split("/")):
        return UsageError  # valid, but no file may be named so in a local store
    if name in REFS:
        return REFS[name]
    if re.fullmatch(r"[0-9a-f]{8,63}", name):
        found = [m for m in MANIFESTS if str(m).startswith(name)]
        if len(found) == 1:
            return found[0]
        if found:
            return UsageError  # ambiguous
    return ObjectNotFound


resolvable = st.one_of(
    names,
    st.sampled_from(
        [
            *REFS,
            "main/x",
            "ci",
            "ci/build-1/x",
            "a" * 300,
            "ab12cd3",
            "ab12cd",
            "ab12cd34",
            "ab12cd35",
            "AB12CD34",
        ]
    ),
    st.sampled_from([str(m) for m in MANIFESTS]).flatmap(
        lambda full: st.integers(0, 66).map(lambda n: full[:n])
    ),
)


@fuzz_settings()
@given(name=resolvable)
@example(name="\udcff")
@example(name="a" * 300)  # was StoreUnavailable (ENAMETOOLONG), which is retried
@example(name="main/x")  # was StoreUnavailable (ENOTDIR): refs/main is a file
def test_resolve_gives_the_documented_manifest_or_a_typed_error(resolve_store, name):
    """`cas get|ls|cat NAME`: a full id, then a ref, then a unique prefix of 8+ hex digits."""

    async def run():
        store = LocalStore(resolve_store, create=False, fsync=False)
        try:
            return await Repository(store).resolve(name)
        finally:
            await store.aclose()

    expected = expected_resolution(name)
    with bounded():
        try:
            got = asyncio.run(run())
        except (UsageError, ObjectNotFound) as exc:
            assert isinstance(expected, type) and isinstance(exc, expected), (name, exc)
            return
    assert got == expected, name


cli_names = st.one_of(
    st.binary(min_size=1, max_size=30).filter(lambda b: b"\0" not in b and not b.startswith(b"-")),
    st.sampled_from([b"\xff", b"ab12cd3", b"ab12cd34", b"main", b"../main", b"a" * 600]),
)


@fuzz_settings(0.01, least=2)
@given(name=cli_names)
@example(name=b"\xff")  # was a UnicodeEncodeError traceback with exit status 1
def test_the_cli_answers_any_name_with_a_typed_exit_code(resolve_store, name):
    """`cas ls NAME` with arbitrary argv bytes: exit 0, 2 (usage) or 3 (not found), no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "cas", "ls", "--store", os.fsencode(resolve_store), name],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    # 4, 11: the planted manifests are not valid objects (resolve worked; the read refused).
    assert proc.returncode in (2, 3, 4, 11), (proc.returncode, proc.stderr)


# ---------------------------------------------------------------- token files

token_lines = st.one_of(
    st.tuples(
        st.sampled_from(["read", "write", "admin", "READ", "Admin", "delete", "", "#read"]),
        st.sampled_from([" ", "\t", "  ", "\u00a0", "\u2028"]),
        st.text(min_size=0, max_size=30),
        st.sampled_from(["", " # comment", " extra", "#", "\r"]),
    ).map("".join),
    st.text(max_size=40),
)


def check_table(table: TokenTable) -> None:
    assert table.entries
    for token, scope in table.entries:
        assert isinstance(scope, Scope)
        assert len(token.decode()) >= MIN_TOKEN_CHARS
        assert b"#" not in token and not token.decode().isspace()
        assert table.scope_of(token.decode()) >= scope


@fuzz_settings()
@given(
    lines=st.lists(token_lines, max_size=6),
    ending=st.sampled_from(["\n", "\r\n", "\r", "\x0b", "\x85"]),
    raw=st.none() | st.binary(max_size=60),
)
def test_token_files_load_or_name_the_bad_line(lines, ending, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens"
        if raw is None:
            path.write_text(ending.join(lines), encoding="utf-8", errors="surrogatepass")
        else:
            path.write_bytes(raw)
        try:
            table = TokenTable.load(path)
        except UsageError as exc:
            assert str(path) in str(exc)
            return
    check_table(table)


@fuzz_settings()
@given(presented=st.one_of(st.text(max_size=40), argv_text, st.just("read-token-0123456789abcdef")))
def test_presented_tokens_match_only_exactly(presented):
    table = TokenTable(((b"read-token-0123456789abcdef", Scope.READ),))
    got = table.scope_of(presented)
    assert got == (Scope.READ if presented == "read-token-0123456789abcdef" else None)


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe read x\n", b"# only a comment\n", b"write short\n"],
)
def test_serve_refuses_a_bad_token_file_in_one_line(tmp_path, content):
    """`cas serve --token-file` with a broken file: exit 2, one line, no traceback."""
    tokens = tmp_path / "tokens"
    tokens.write_bytes(content)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cas",
            "serve",
            "--store",
            str(tmp_path / "s"),
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            str(tokens),
        ],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr
