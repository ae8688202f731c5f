"""Fuzz the tree and manifest parsers directly (`Tree.from_bytes`, `Manifest.from_bytes`).

tests/test_hostile_manifests.py already runs random documents through a
whole `get` (a few dozen examples, each a store and a download). These
properties call the parsers alone, so a campaign can afford many thousands
of examples, and they check more of what a success means: a parsed
document re-serialises canonically and parses back to the same value, its
names are safe, its numbers are in range. Failures must be `FormatError`
(wrong shape) or `UnsafeManifest` (a name or target that could escape).
"""

from __future__ import annotations

import base64
import json

from hypothesis import example, given
from hypothesis import strategies as st

from cas.errors import FormatError, UnsafeManifest
from cas.objects import (
    MAX_LINK_TARGET_BYTES,
    MAX_NAME_BYTES,
    DirEntry,
    FileEntry,
    Manifest,
    SymlinkEntry,
    Tree,
    encode_name,
)
from tests.fuzz import bounded, fuzz_settings
from tests.helpers_hostile import CHUNKER, canon, manifest_doc

HEX = "0123456789abcdef"
ids = st.text(alphabet=HEX, min_size=64, max_size=64)
raw_names = st.binary(min_size=1, max_size=40).filter(
    lambda b: b not in (b".", b"..") and b"/" not in b and b"\0" not in b
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["file", "dir", "symlink", "..", "/", "", "AAAA", "=", "a" * 64, "\0"]),
    ids,
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=6,
)


def name_fields(raw: bytes, as_b64: bool) -> dict:
    """`name`, or `name_b64` when asked or when `raw` is not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        as_b64 = True
    if as_b64:
        return {"name_b64": base64.b64encode(raw).decode()}
    return {"name": text}


@st.composite
def entry_docs(draw):
    raw = draw(raw_names)
    fields = name_fields(raw, False)  # canonical: base64 only for names that are not UTF-8
    if draw(st.booleans()):
        fields["mtime_ns"] = draw(st.integers(-(2**63), 2**63 - 1))
    kind = draw(st.sampled_from(["file", "chunked", "dir", "symlink"]))
    if kind == "file":
        data = draw(st.binary(max_size=30))
        return {
            "kind": "file",
            "mode": draw(st.integers(0, 0o7777)),
            "size": len(data),
            "digest": draw(ids),
            "data": base64.b64encode(data).decode(),
            **fields,
        }
    if kind == "chunked":
        lengths = draw(st.lists(st.integers(1, 1 << 40), max_size=3))
        return {
            "kind": "file",
            "mode": draw(st.integers(0, 0o7777)),
            "size": sum(lengths),
            "digest": draw(ids),
            "chunks": [[draw(ids), n] for n in lengths],
            **fields,
        }
    if kind == "dir":
        return {"kind": "dir", "mode": draw(st.integers(0, 0o7777)), "tree": draw(ids), **fields}
    target = draw(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b))
    try:
        target_field = {"target": target.decode("utf-8")}
    except UnicodeDecodeError:
        target_field = {"target_b64": base64.b64encode(target).decode()}
    return {"kind": "symlink", **target_field, **fields}


def sorted_entries(entries: list[dict]) -> list[dict]:
    def key(e):
        if "name_b64" in e:
            return base64.b64decode(e["name_b64"])
        return e["name"].encode()

    unique = {key(e): e for e in entries}
    return [unique[k] for k in sorted(unique)]


tree_docs = st.lists(entry_docs(), max_size=5).map(
    lambda es: {"format": "cas.tree/1", "entries": sorted_entries(es)}
)

# A mutation: (path into the document, new value or deletion).
mutations = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "format",
                "entries",
                "kind",
                "name",
                "name_b64",
                "mode",
                "size",
                "digest",
                "data",
                "chunks",
                "tree",
                "target",
                "target_b64",
                "mtime_ns",
                "extra",
            ]
        ),
        st.integers(0, 4),
        st.one_of(st.just(KeyError), json_values),
    ),
    max_size=3,
)


def mutate(doc: dict, changes) -> dict:
    for key, which, value in changes:
        entries = doc.get("entries")
        target = doc
        if key not in ("format", "entries") and isinstance(entries, list) and entries:
            target = entries[which % len(entries)]
            if not isinstance(target, dict):
                continue
        if value is KeyError:
            target.pop(key, None)
        else:
            target[key] = value
    return doc


def check_tree(tree: Tree) -> None:
    """What a successful parse promises the writer of files."""
    previous = None
    for entry in tree.entries:
        raw = encode_name(entry.name)
        assert raw not in (b"", b".", b"..") and b"/" not in raw and b"\0" not in raw
        assert len(raw) <= MAX_NAME_BYTES
        assert previous is None or raw > previous
        previous = raw
        if isinstance(entry, FileEntry | DirEntry):
            assert 0 <= entry.mode <= 0o7777
        if isinstance(entry, FileEntry):
            if entry.inline is not None:
                assert len(entry.inline) == entry.size and not entry.chunks
            else:
                assert sum(c.length for c in entry.chunks) == entry.size
                assert all(c.length >= 1 for c in entry.chunks)
        if isinstance(entry, SymlinkEntry):
            target = encode_name(entry.target)
            assert 0 < len(target) <= MAX_LINK_TARGET_BYTES and b"\0" not in target
    again = Tree.from_bytes(tree.to_bytes())
    assert again == tree
    assert again.to_bytes() == tree.to_bytes()


def parse_tree(data: bytes) -> Tree | None:
    with bounded():
        try:
            tree = Tree.from_bytes(data)
        except (FormatError, UnsafeManifest):
            return None
    check_tree(tree)
    return tree


@fuzz_settings()
@given(doc=tree_docs)
def test_valid_trees_round_trip_byte_for_byte(doc):
    data = canon(doc)
    tree = parse_tree(data)
    assert tree is not None
    assert tree.to_bytes() == data


@fuzz_settings()
@given(doc=tree_docs, changes=mutations)
@example(doc={"format": "cas.tree/1", "entries": []}, changes=[("entries", 0, {"a": 1})])
def test_mutated_trees_parse_safely_or_are_refused(doc, changes):
    parse_tree(canon(mutate(doc, changes)))


@fuzz_settings()
@given(
    payload=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.integers(1, 100_000).map(lambda n: b"[" * n),
        st.integers(1, 100_000).map(lambda n: b'{"a":' * n),
        st.integers(4000, 6000).map(lambda n: b'{"format":' + b"9" * n + b"}"),
        st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
)
@example(payload=b'{"entries":[{"kind":"file","name":"\\ud800"}],"format":"cas.tree/1"}')
def test_random_payloads_are_trees_or_typed_errors(payload):
    parse_tree(payload)
    parse_manifest(payload)


# ---------------------------------------------------------------- manifests


def parse_manifest(data: bytes) -> Manifest | None:
    with bounded():
        try:
            manifest = Manifest.from_bytes(data)
        except FormatError:
            return None
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    assert manifest.chunker.min_size <= manifest.chunker.avg_size <= manifest.chunker.max_size
    for value in manifest.totals.to_dict().values():
        assert 0 <= value < 2**63
    return manifest


manifest_docs = st.builds(
    lambda *args: _manifest(*args),
    ids,
    st.none() | st.text(max_size=25),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    st.lists(st.text(max_size=8), max_size=3),
    st.booleans(),
)


def _manifest(root, created, labels, excludes, mtimes) -> dict:
    doc = {
        "format": "cas.manifest/1",
        "root": root,
        "chunker": dict(CHUNKER),
        "totals": {"files": 1, "dirs": 0, "symlinks": 0, "bytes": 3, "chunks": 0},
        "excludes": excludes,
        "labels": labels,
        "mtimes": mtimes,
    }
    if created is not None:
        doc["created"] = created
        doc["tool"] = "cas 0.1.0"
    return doc


manifest_mutations = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "format",
                "root",
                "chunker",
                "totals",
                "excludes",
                "labels",
                "mtimes",
                "created",
                "tool",
                "extra",
                "chunker.min_size",
                "chunker.avg_size",
                "chunker.max_size",
                "chunker.algorithm",
                "chunker.normalization",
                "chunker.seed",
                "totals.files",
                "totals.bytes",
                "totals.extra",
            ]
        ),
        st.one_of(st.just(KeyError), json_values, st.integers(-(2**64), 2**64)),
    ),
    max_size=3,
)


@fuzz_settings()
@given(doc=manifest_docs, changes=manifest_mutations)
def test_mutated_manifests_parse_consistently_or_are_format_errors(doc, changes):
    for path, value in changes:
        target = doc
        key = path
        if "." in path:
            outer, key = path.split(".")
            target = doc.get(outer)
            if not isinstance(target, dict):
                continue
        if value is KeyError:
            target.pop(key, None)
        else:
            target[key] = value
    parse_manifest(canon(doc))


def test_generated_manifest_doc_helper_still_parses():
    """The helper the hostile-manifest tests use makes documents this parser accepts."""
    assert parse_manifest(canon(manifest_doc("0" * 64))) is not None
