"""Trees and manifests: canonical bytes, strict parsing, ids, codec limits."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import codec
from cas.chunking import ChunkParams
from cas.errors import FormatError, IntegrityError, UnsafeManifest, UsageError
from cas.ids import ObjectId, hash_bytes
from cas.objects import (
    ChunkRef,
    DirEntry,
    FileEntry,
    Manifest,
    SymlinkEntry,
    Totals,
    Tree,
    _common_entry,
    _parse_entry,
)
from tests.trees import names

ids = st.binary(min_size=32, max_size=32).map(ObjectId)
mtimes = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1))
modes = st.integers(min_value=0, max_value=0o7777)


@st.composite
def file_entries(draw, name):
    if draw(st.booleans()):
        data = draw(st.binary(max_size=100))
        return FileEntry(name, draw(modes), len(data), draw(mtimes), hash_bytes(data), (), data)
    lengths = draw(st.lists(st.integers(min_value=1, max_value=1 << 22), max_size=6))
    chunks = tuple(ChunkRef(draw(ids), n) for n in lengths)
    return FileEntry(name, draw(modes), sum(lengths), draw(mtimes), draw(ids), chunks, None)


@st.composite
def tree_objects(draw):
    entry_names = draw(st.sets(names, max_size=12))
    entries = []
    for name in entry_names:
        kind = draw(st.sampled_from(["file", "dir", "symlink"]))
        if kind == "file":
            entries.append(draw(file_entries(name)))
        elif kind == "dir":
            entries.append(DirEntry(name, draw(modes), draw(mtimes), draw(ids)))
        else:
            target = draw(names)
            entries.append(SymlinkEntry(name, target, draw(mtimes)))
    return Tree.build(draw(st.permutations(entries)))


@settings(max_examples=200)
@given(tree=tree_objects())
def test_tree_roundtrip_and_canonical(tree):
    data = tree.to_bytes()
    parsed = Tree.from_bytes(data)
    assert parsed == tree
    assert parsed.to_bytes() == data
    assert parsed.id() == hash_bytes(data)


@settings(max_examples=100)
@given(tree=tree_objects())
def test_tree_id_independent_of_entry_order(tree):
    shuffled = Tree.build(reversed(tree.entries))
    assert shuffled.id() == tree.id()


@settings(max_examples=100)
@given(
    root=ids,
    labels=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=4),
    excludes=st.lists(st.text(max_size=20), max_size=4),
    totals=st.builds(Totals, *(st.integers(min_value=0, max_value=2**40) for _ in range(5))),
    mtimes_flag=st.booleans(),
    created=st.one_of(st.none(), st.just("2026-11-28T12:00:00Z")),
)
def test_manifest_roundtrip(root, labels, excludes, totals, mtimes_flag, created):
    manifest = Manifest(
        root,
        ChunkParams(),
        totals,
        tuple(excludes),
        labels,
        mtimes_flag,
        created,
        None if created is None else "cas 0.1.0",
    )
    data = manifest.to_bytes()
    parsed = Manifest.from_bytes(data)
    assert parsed == manifest
    assert parsed.to_bytes() == data


def _tree_json(entries):
    return json.dumps({"format": "cas.tree/1", "entries": entries}).encode()


GOOD_FILE = {"kind": "file", "name": "a", "mode": 420, "size": 0, "digest": "0" * 64, "data": ""}


@pytest.mark.parametrize(
    ("mutation", "error"),
    [
        ({"name": ".."}, UnsafeManifest),
        ({"name": "."}, UnsafeManifest),
        ({"name": ""}, UnsafeManifest),
        ({"name": "a/b"}, UnsafeManifest),
        ({"name": "/etc"}, UnsafeManifest),
        ({"name": "nul\u0000"}, UnsafeManifest),
        ({"name": "x" * 256}, UnsafeManifest),
        ({"mode": -1}, FormatError),
        ({"mode": 0o17777}, FormatError),
        ({"size": 5}, FormatError),
        ({"digest": "ZZ"}, FormatError),
        ({"kind": "fifo"}, FormatError),
        ({"extra": 1}, FormatError),
        ({"mode": True}, FormatError),
    ],
)
def test_strict_entry_parsing(mutation, error):
    with pytest.raises(error):
        Tree.from_bytes(_tree_json([{**GOOD_FILE, **mutation}]))


def test_tree_rejects_duplicates_and_unsorted():
    a = {**GOOD_FILE, "name": "a"}
    b = {**GOOD_FILE, "name": "b"}
    Tree.from_bytes(_tree_json([a, b]))
    with pytest.raises(UnsafeManifest):
        Tree.from_bytes(_tree_json([b, a]))
    with pytest.raises(UnsafeManifest):
        Tree.from_bytes(_tree_json([a, a]))


def test_tree_rejects_bad_documents():
    for data in [b"", b"[]", b"\xff", b'{"format":"cas.tree/2","entries":[]}', b'{"entries":[]}']:
        with pytest.raises(FormatError):
            Tree.from_bytes(data)


def test_chunk_lengths_must_add_up():
    entry = {
        "kind": "file",
        "name": "f",
        "mode": 420,
        "size": 10,
        "digest": "0" * 64,
        "chunks": [["1" * 64, 4], ["2" * 64, 5]],
    }
    with pytest.raises(FormatError, match="add up"):
        Tree.from_bytes(_tree_json([entry]))
    entry["chunks"][1][1] = 0
    with pytest.raises(FormatError):
        Tree.from_bytes(_tree_json([entry]))


def test_non_utf8_names_round_trip_as_base64():
    import os

    name = os.fsdecode(b"caf\xe9")
    tree = Tree.build([SymlinkEntry(name, os.fsdecode(b"\xff"), None)])
    data = tree.to_bytes()
    assert b"name_b64" in data and b"target_b64" in data
    assert Tree.from_bytes(data) == tree


def test_object_id_parsing_is_strict():
    good = "ab" * 32
    assert str(ObjectId.parse(good)) == good
    for bad in ["AB" * 32, "ab" * 31, "ab" * 33, "g" * 64, " " + good[1:], good + "\n"]:
        with pytest.raises(UsageError):
            ObjectId.parse(bad)


def test_codec_refuses_bombs_and_junk():
    data = b"\0" * (1 << 20)
    blob = codec.encode(data)
    assert codec.decode(blob, 1 << 20, kind="chunk", object_id="x") == data
    with pytest.raises(IntegrityError, match="limit"):
        codec.decode(blob, (1 << 20) - 1, kind="chunk", object_id="x")
    with pytest.raises(IntegrityError):
        codec.decode(b"junk", 100, kind="chunk", object_id="x")
    import zstandard

    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"abc")
    with pytest.raises(IntegrityError, match="declare"):
        codec.decode(no_size, 100, kind="chunk", object_id="x")


def test_chunk_params_validation():
    ChunkParams.from_avg(1 << 20)
    with pytest.raises(UsageError):
        ChunkParams(min_size=10, avg_size=1024, max_size=4096)
    with pytest.raises(UsageError):
        ChunkParams(min_size=4096, avg_size=1024, max_size=8192)
    with pytest.raises(UsageError):
        ChunkParams.from_dict({"algorithm": "rabin", "min_size": 1})


# The common-entry fast path must accept only what the strict parser accepts.

_ID = "0123456789abcdef" * 4
EDGE_VALUES = [
    None, True, False, 0, 1, -1, 0o7777, 0o10000, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
    1.5, "", ".", "..", "a/b", "/", "nul\u0000", "x" * 255, "x" * 256, "é", "\udc80", "a",
    _ID, _ID.upper(), _ID[:-1], _ID + "0", "AAAA", "AA==", "A", "!!", "t" * 4095, "t" * 4096,
    [], [[_ID, 1]], [[_ID, 0]], [[_ID, -1]], [[_ID, True]], [[_ID]], [[_ID, 1, 2]],
    [[_ID.upper(), 1]], [[1, _ID]], [(_ID, 1)], {"a": 1}, [None], [[_ID, 0], [_ID, 3]],
    [[_ID, -1], [_ID, 4]], [[_ID, 1], [_ID, 2]], [[_ID, True], [_ID, 2]],
]  # fmt: skip
entry_keys = st.sampled_from(
    ["kind", "name", "name_b64", "mode", "size", "digest", "data", "chunks", "tree",
     "target", "target_b64", "mtime_ns", "extra"]
)  # fmt: skip
kinds = st.sampled_from(["file", "dir", "symlink", "fifo", "File"])


@st.composite
def hostile_entries(draw):
    """A real entry, as JSON, with a few keys changed, added or removed."""
    name = draw(names)
    entry = draw(
        st.one_of(
            file_entries(name),
            st.builds(DirEntry, st.just(name), modes, mtimes, ids),
            st.builds(SymlinkEntry, st.just(name), names, mtimes),
        )
    )
    raw = json.loads(Tree.build([entry]).to_bytes())["entries"][0]
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        key = draw(entry_keys)
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            raw.pop(key, None)
        elif key == "kind":
            raw[key] = draw(kinds)
        else:
            raw[key] = draw(st.sampled_from(EDGE_VALUES) | st.integers() | st.text(max_size=4))
    return raw


BASE_ENTRIES = [
    {"kind": "file", "name": "f", "mode": 420, "size": 3, "digest": _ID, "chunks": [[_ID, 3]]},
    {"kind": "file", "name": "i", "mode": 420, "size": 1, "digest": _ID, "data": "AA=="},
    {"kind": "dir", "name": "d", "mode": 493, "tree": _ID, "mtime_ns": 5},
    {"kind": "symlink", "name": "l", "target": "t"},
]


def test_common_entry_refuses_every_single_edge_the_strict_parser_refuses():
    """Each key of each kind of entry set to each edge value, or removed."""
    tried = accepted = 0
    for base in BASE_ENTRIES:
        assert _common_entry(base) == _parse_entry(base, "entry")
        for key in entry_keys.elements:
            for value in [*EDGE_VALUES, ...]:
                raw = {k: v for k, v in base.items() if k != key}
                if value is not ...:
                    raw[key] = value
                quick = _common_entry(raw)
                tried += 1
                if quick is not None:
                    accepted += 1
                    assert _parse_entry(raw, "entry") == quick, raw
    assert tried > 2000 and accepted > 50


@settings(max_examples=1000)
@given(raw=hostile_entries())
def test_common_entry_accepts_only_what_the_strict_parser_accepts(raw):
    quick = _common_entry(raw)
    if quick is not None:
        assert _parse_entry(raw, "entry") == quick


@settings(max_examples=200)
@given(tree=tree_objects())
def test_common_entries_take_the_fast_path(tree):
    for raw, entry in zip(json.loads(tree.to_bytes())["entries"], tree.entries, strict=True):
        quick = _common_entry(raw)
        ascii_only = entry.name.isascii() and getattr(entry, "target", "").isascii()
        assert quick == entry if ascii_only else quick in (None, entry)
