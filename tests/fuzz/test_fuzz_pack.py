"""Fuzz the binary formats: zstd framing (cas/codec.py), packs (cas/pack.py), pack indexes
(cas/packindex.py).

A reader of a store object gets bytes a hostile writer chose. Every property
here feeds such bytes (random, or a valid object spoiled) to the parser and
accepts exactly two outcomes: a value that keeps the format's invariants
(docs/format.md), or `IntegrityError` naming the object. Declared sizes are
attacker-controlled, so the memory properties check that a header claiming
2^40 bytes or 2^32 entries is refused without allocating anything like it.
"""

from __future__ import annotations

import contextlib
import struct

from hypothesis import example, given
from hypothesis import strategies as st

from cas import codec
from cas.errors import IntegrityError
from cas.ids import ID_BYTES, ObjectId, hash_bytes
from cas.pack import (
    ENTRY,
    FOOTER,
    HEAD_MAGIC,
    MAX_ENTRIES,
    MAX_TREE_BYTES,
    TAIL_MAGIC,
    ObjectKind,
    build_pack,
    entries_from_trailer,
    parse_footer,
    parse_trailer,
    read_entries,
    verify_pack,
)
from cas.packindex import (
    HEADER,
    MAGIC,
    MAX_INDEX_BYTES,
    PackIndex,
    decode_index,
    encode_index,
    index_name,
)
from tests.fuzz import bounded, fuzz_settings, peak_alloc

MAX_CHUNK = 1 << 16
PACK_ID = ObjectId(bytes(range(32)))


def zstd_header(content_size: int, block: bytes = b"\x01\x00\x00") -> bytes:
    """A single-segment frame header declaring `content_size` (8-byte field), then `block`."""
    return b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + content_size.to_bytes(8, "little") + block


def spoil(data: bytes, edits: list[tuple[int, int]], cut: int, extra: bytes) -> bytes:
    """`data` with some bytes replaced, cut at `cut` (0 keeps all), and `extra` appended."""
    out = bytearray(data)
    for where, value in edits:
        if out:
            out[where % len(out)] = value
    if cut and out:
        del out[cut % len(out) :]
    return bytes(out) + extra


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4)
contents = st.lists(st.binary(max_size=300), min_size=0, max_size=6, unique=True)


# ---------------------------------------------------------------- codec


@fuzz_settings()
@given(
    data=st.binary(max_size=2000),
    max_size=st.integers(0, 1 << 20),
    edits=edits,
    cut=st.integers(0, 3000),
    extra=st.binary(max_size=8),
    raw=st.booleans(),
)
@example(data=b"", max_size=0, edits=[], cut=0, extra=b"", raw=False)
def test_decode_gives_the_declared_size_or_integrity_error(data, max_size, edits, cut, extra, raw):
    """`codec.decode` returns exactly the declared size, within `max_size`, or refuses."""
    blob = data if raw else spoil(codec.encode(data), edits, cut, extra)
    with bounded():
        try:
            out = codec.decode(blob, max_size, kind="chunk", object_id="x" * 64)
        except IntegrityError as exc:
            assert exc.object_id == "x" * 64
            return
    assert len(out) <= max_size
    assert len(out) == codec.decoded_size(blob)


@fuzz_settings(0.25)
@given(
    declared=st.sampled_from([1 << 40, (1 << 64) - 2, MAX_INDEX_BYTES + 1, 1 << 33]),
    block=st.sampled_from([b"\x01\x00\x00", b"\x03\x00\x00A", b"", b"\x05\x00\x00\xff\x00"]),
)
def test_a_frame_declaring_a_huge_size_is_refused_without_allocating(declared, block):
    """A 20-byte frame claiming terabytes must not make the reader reserve them."""
    with bounded(), peak_alloc() as peak:
        try:
            codec.decode(zstd_header(declared, block), MAX_INDEX_BYTES, kind="index", object_id="i")
        except IntegrityError:
            pass
        else:
            raise AssertionError("a frame declaring more than it holds was accepted")
    assert peak[0] < 1 << 20, f"refusing it allocated {peak[0]} bytes"


# ---------------------------------------------------------------- packs


def check_tiling(entries, size: int, trailer_len: int) -> None:
    expected = len(HEAD_MAGIC)
    seen = set()
    for entry in entries:
        assert entry.offset == expected and entry.stored >= 1
        assert entry.raw <= (MAX_CHUNK if entry.kind is ObjectKind.CHUNK else MAX_TREE_BYTES)
        assert (entry.kind, entry.id) not in seen
        seen.add((entry.kind, entry.id))
        expected += entry.stored
    assert expected == size - trailer_len - FOOTER.size


@fuzz_settings()
@given(items=contents, kinds=st.lists(st.booleans(), min_size=6, max_size=6))
def test_built_packs_verify_and_list_what_was_packed(items, kinds):
    """Round trip: a pack built from objects verifies and lists exactly them."""
    objects = [
        (ObjectKind.TREE if k else ObjectKind.CHUNK, d) for d, k in zip(items, kinds, strict=False)
    ]
    sealed = build_pack(objects)
    entries = verify_pack(sealed.id, sealed.data, max_chunk=MAX_CHUNK)
    assert entries == sealed.entries
    assert [(e.kind, e.id, e.raw) for e in entries] == [
        (kind, hash_bytes(data), len(data)) for kind, data in objects
    ]


@fuzz_settings()
@given(
    items=contents,
    edits=edits,
    cut=st.integers(0, 1 << 12),
    extra=st.binary(max_size=60),
    rename=st.booleans(),
)
def test_spoiled_packs_are_refused_or_still_consistent(items, edits, cut, extra, rename):
    """A damaged pack (named after its damaged bytes, as a hostile writer would) is refused
    with `IntegrityError`, or is still a well-formed pack whose every frame verifies."""
    sealed = build_pack((ObjectKind.CHUNK, d) for d in items)
    data = spoil(sealed.data, edits, cut, extra)
    pack_id = hash_bytes(data) if rename else sealed.id
    with bounded():
        try:
            entries = verify_pack(pack_id, data, max_chunk=MAX_CHUNK)
        except IntegrityError as exc:
            assert exc.kind in ("pack", "chunk", "tree")
            return
    trailer_len, count = parse_footer(pack_id, data[-FOOTER.size :], len(data))
    assert count == len(entries)
    check_tiling(entries, len(data), trailer_len)


@fuzz_settings()
@given(data=st.binary(max_size=1200), head=st.booleans(), tail=st.booleans())
def test_random_bytes_as_a_pack(data, head, tail):
    """Raw garbage, optionally with the right magic at either end: entries or refusal."""
    blob = (HEAD_MAGIC if head else b"") + data
    if tail:
        count = len(data) // ENTRY.size
        blob += FOOTER.pack(count * ENTRY.size, count, TAIL_MAGIC)
    with bounded():
        try:
            entries = read_entries(PACK_ID, blob, max_chunk=MAX_CHUNK)
        except IntegrityError:
            return
    trailer_len, _ = parse_footer(PACK_ID, blob[-FOOTER.size :], len(blob))
    check_tiling(entries, len(blob), trailer_len)


@fuzz_settings()
@given(
    trailer_len=st.integers(0, (1 << 32) - 1),
    count=st.integers(0, (1 << 32) - 1),
    size=st.integers(0, 1 << 40),
)
@example(
    trailer_len=((1 << 32) - 1) // ENTRY.size * ENTRY.size,
    count=(1 << 32) // ENTRY.size,
    size=1 << 40,
)
def test_footer_counts_are_bounded_before_use(trailer_len, count, size):
    """A footer (the reader's first read of a pack) is checked against the limits and the size."""
    footer = FOOTER.pack(trailer_len, count, TAIL_MAGIC)
    try:
        got = parse_footer(PACK_ID, footer, size)
    except IntegrityError:
        return
    assert got == (trailer_len, count)
    assert count <= MAX_ENTRIES and trailer_len == count * ENTRY.size
    assert trailer_len <= size - len(HEAD_MAGIC) - FOOTER.size


entry_tuples = st.tuples(
    st.integers(0, 3),
    st.binary(min_size=32, max_size=32),
    st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 32) - 1),
    st.integers(0, (1 << 32) - 1),
)


@fuzz_settings()
@given(
    rows=st.lists(entry_tuples, max_size=8),
    junk=st.binary(max_size=60),
    size=st.integers(0, 1 << 33),
)
@example(rows=[], junk=b"\x00", size=0)  # was struct.error, not IntegrityError
def test_trailers_kept_apart_parse_or_are_refused(rows, junk, size):
    """A journal's trailer (or one read by range), any fields: tiled entries or refusal."""
    trailer = b"".join(ENTRY.pack(*row) for row in rows)
    for blob in (trailer, trailer + junk):
        with bounded():
            try:
                entries = entries_from_trailer(PACK_ID, blob, max_chunk=MAX_CHUNK)
            except IntegrityError:
                pass
            else:
                total = len(HEAD_MAGIC) + sum(e.stored for e in entries) + len(blob) + FOOTER.size
                check_tiling(entries, total, len(blob))
            try:
                entries = parse_trailer(PACK_ID, blob, size, max_chunk=MAX_CHUNK)
            except IntegrityError:
                pass
            else:
                check_tiling(entries, size, len(blob))


# ---------------------------------------------------------------- pack indexes

MANIFEST = ObjectId(bytes([7]) * 32)


def named_index(body: bytes, manifest: bytes = MANIFEST) -> tuple[ObjectId, bytes]:
    """A blob named honestly after `body`, so the parse itself is what gets fuzzed."""
    return index_name(ObjectId(manifest), body), codec.encode(body)


index_rows = st.tuples(
    st.integers(0, 2),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 4),
    st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 32) - 1),
    st.integers(0, (1 << 32) - 1),
)


def index_body(packs, rows, pack_count=None, count=None, magic=MAGIC, manifest=MANIFEST):
    head = HEADER.pack(
        magic,
        manifest,
        len(packs) if pack_count is None else pack_count,
        len(rows) if count is None else count,
    )
    body = head + b"".join(packs)
    return body + b"".join(struct.pack("<B32sIQII", *r) for r in rows)


def check_index(index: PackIndex, packs: list[bytes]) -> None:
    assert bytes(index.manifest) == bytes(MANIFEST)
    assert index.packs() <= {ObjectId(p) for p in packs}
    again = decode_index(*encode_index(index))
    assert (again.chunks, again.trees) == (index.chunks, index.trees)


@fuzz_settings()
@given(
    packs=st.lists(st.binary(min_size=32, max_size=32), max_size=4),
    rows=st.lists(index_rows, max_size=6),
    sort=st.booleans(),
    pack_count=st.none() | st.integers(0, (1 << 32) - 1),
    count=st.none() | st.integers(0, (1 << 32) - 1),
    junk=st.binary(max_size=40),
    magic=st.sampled_from([MAGIC, b"CASIDX1\x00", b"\x00" * 8]),
)
def test_index_bodies_parse_to_consistent_tables_or_are_refused(
    packs, rows, sort, pack_count, count, junk, magic
):
    """Any body, honestly named: a table that names only listed packs and re-encodes to
    the same locations, or `IntegrityError`."""
    if sort:
        rows = sorted(rows, key=lambda r: (r[0], r[1]))
    body = index_body(packs, rows, pack_count, count, magic) + junk
    name, blob = named_index(body)
    with bounded():
        try:
            index = decode_index(name, blob)
        except IntegrityError as exc:
            assert exc.kind == "index" and exc.object_id == str(name)
            return
    check_index(index, packs)


@fuzz_settings()
@given(
    data=st.binary(max_size=600),
    name=st.binary(min_size=32, max_size=32),
    edits=edits,
    honest=st.booleans(),
)
def test_random_index_blobs(data, name, edits, honest):
    """Random and spoiled blobs under random or honest names: refusal or a consistent table."""
    good = index_body(
        [bytes(32)], [(0, bytes(32), 0, 8, 10, 20), (1, bytes([1]) * 32, 0, 18, 5, 9)]
    )
    blob = spoil(codec.encode(good), edits, 0, b"") if edits else data
    object_id = ObjectId(name)
    if honest:
        with contextlib.suppress(IntegrityError):
            object_id = index_name(MANIFEST, codec.decode(blob, 1 << 20, kind="i", object_id="i"))
    with bounded():
        try:
            index = decode_index(object_id, blob)
        except IntegrityError:
            return
    check_index(index, [bytes(32)])


def test_an_index_claiming_2_to_the_40_entries_is_refused_without_allocating():
    """Counts in the header are checked against the body's length before anything is built."""
    for pack_count, count in (
        ((1 << 32) - 1, (1 << 32) - 1),
        (0, (1 << 32) - 1),
        ((1 << 32) - 1, 0),
    ):
        body = index_body([bytes(32)], [(0, bytes(32), 0, 8, 10, 20)], pack_count, count)
        name, blob = named_index(body)
        with bounded(), peak_alloc() as peak:
            try:
                decode_index(name, blob)
            except IntegrityError as exc:
                assert "counts" in str(exc)
            else:
                raise AssertionError("an index with lying counts was accepted")
        assert peak[0] < 1 << 20, f"refusing it allocated {peak[0]} bytes"
    # And a frame declaring 2^40 bytes of body is refused by its header alone.
    with bounded(), peak_alloc() as peak:
        try:
            decode_index(ObjectId(bytes(32)), zstd_header(1 << 40))
        except IntegrityError as exc:
            assert "limit" in str(exc)
    assert peak[0] < 1 << 20


def test_an_index_naming_another_manifest_or_misnamed_is_refused():
    body = index_body([bytes(32)], [(0, bytes(32), 0, 8, 10, 20)])
    name, blob = named_index(body)
    wrong_half = ObjectId(bytes(name)[:16] + bytes(16))
    other_manifest = ObjectId(bytes(16) + bytes(name)[16:])
    for bad in (wrong_half, other_manifest):
        try:
            decode_index(bad, blob)
        except IntegrityError:
            continue
        raise AssertionError(f"index accepted under {bad}")
    assert ID_BYTES == 32
