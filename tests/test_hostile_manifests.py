"""Invariants 1 and 4: hostile or corrupt objects in a store are refused, and harmless.

Every object here is written by hand (canonical JSON, `codec.encode`, named
with `hash_bytes`, or deliberately misnamed) straight into a real
`LocalStore`, then fetched with the real `Downloader`. Chunks and trees are
frames in packs (store format 2): `tests.helpers_hostile` packs whatever was
planted, forged frames included, and writes each manifest's index, honest
unless a test forges it too. Each case checks the typed error and its
message, that nothing outside the destination changed, and, when the problem
can be seen before writing, that the destination was not even created.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import codec
from cas.errors import (
    CasError,
    DestinationError,
    FormatError,
    IntegrityError,
    ObjectNotFound,
    UnsafeManifest,
)
from cas.get.browse import MAX_DEPTH
from cas.ids import ObjectId, hash_bytes
from cas.objects import MAX_MANIFEST_BYTES, MAX_NAME_BYTES
from cas.pack import ObjectKind
from cas.packindex import Location, PackIndex, encode_index, index_name, index_prefix
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from tests.helpers_hostile import (
    CHUNKER,
    MAX_CHUNK,
    canon,
    chunked_file,
    digest,
    dir_entry,
    fake_id,
    get_into,
    inline_file,
    leftovers,
    manifest_doc,
    plant_bytes,
    plant_doc,
    plant_frame,
    plant_manifest,
    plant_manifest_blob,
    plant_pack,
    plant_root,
    plant_tree,
    snapshot_tree,
    symlink,
    tree_doc,
)
from tests.trees import make_writable


@pytest.fixture
async def lstore(tmp_path):
    store = LocalStore(tmp_path / "store", fsync=False)
    yield store
    await store.aclose()


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory next to the destination that a hostile manifest would like to write into."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_text("original\n")
    return path


async def refused(store, tmp_path, manifest_id, error, *needles, dest_may_exist=False):
    """Run get; it must raise `error` naming `needles`, and write nothing outside dest."""
    dest = tmp_path / "dest"
    before = snapshot_tree(tmp_path, exclude=(dest,))
    with pytest.raises(error) as info:
        await asyncio.wait_for(get_into(store, manifest_id, dest), timeout=30)
    message = str(info.value)
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not in error message {message!r}"
    assert snapshot_tree(tmp_path, exclude=(dest,)) == before, "get wrote outside dest"
    if dest_may_exist:
        assert leftovers(tmp_path) == []
    else:
        assert not os.path.lexists(dest), "validation failed but dest was created"
    return info.value


async def nested(store, hostile: list[dict], *, sort: bool = True):
    """A manifest whose root holds a good file and `sub/` holding `hostile` entries.

    Returns (manifest id, id of the hostile tree).
    """
    sub = await plant_tree(store, hostile, sort=sort)
    root = [inline_file("a_good", b"good data"), dir_entry("sub", sub)]
    return await plant_root(store, root), sub


# ---------------------------------------------------------------- names


BAD_NAMES = [
    ("..", "not allowed"),
    (".", "not allowed"),
    ("", "not allowed"),
    ("a/b", "contains '/'"),
    ("../escape", "contains '/'"),
    ("/etc/x", "contains '/'"),
    ("/", "contains '/'"),
    ("nul\0byte", "NUL"),
    (b"..", "not allowed"),
    (b"x/../../y", "contains '/'"),
    (b"\xff\0", "NUL"),
    ("a" * (MAX_NAME_BYTES + 1), f"longer than {MAX_NAME_BYTES}"),
    (b"\xfe" * (MAX_NAME_BYTES + 1), f"longer than {MAX_NAME_BYTES}"),
    ("é" * 128, f"longer than {MAX_NAME_BYTES}"),  # 128 characters, 256 bytes
]


async def _entry_of_kind(store, kind: str, name):
    if kind == "file":
        return inline_file(name, b"payload")
    if kind == "dir":
        inner = await plant_tree(store, [inline_file("payload", b"payload")])
        return dir_entry(name, inner)
    return symlink(name, "/tmp/cas-hostile-target")


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
@pytest.mark.parametrize(("name", "problem"), BAD_NAMES, ids=lambda v: repr(v)[:24])
async def test_unsafe_entry_names_are_refused_before_writing(
    lstore, tmp_path, outside, kind, name, problem
):
    entry = await _entry_of_kind(lstore, kind, name)
    manifest_id, sub = await nested(lstore, [entry])
    await refused(lstore, tmp_path, manifest_id, UnsafeManifest, problem, f"tree {sub}")
    assert not os.path.lexists("/tmp/cas-hostile-target")


async def test_longest_allowed_name_is_written(lstore, tmp_path):
    name = "n" * MAX_NAME_BYTES
    manifest_id = await plant_root(lstore, [inline_file(name, b"ok")])
    await get_into(lstore, manifest_id, tmp_path / "dest")
    assert (tmp_path / "dest" / name).read_bytes() == b"ok"


@pytest.mark.parametrize(("target", "problem"), [("", "empty"), ("a\0b", "NUL")])
async def test_bad_symlink_targets_are_refused(lstore, tmp_path, target, problem):
    manifest_id, _ = await nested(lstore, [symlink("link", target)])
    await refused(lstore, tmp_path, manifest_id, UnsafeManifest, problem)


# ---------------------------------------------------------------- duplicates, order


async def test_duplicate_names_are_refused(lstore, tmp_path):
    entries = [inline_file("same", b"one"), inline_file("same", b"two")]
    manifest_id, _ = await nested(lstore, entries, sort=False)
    await refused(lstore, tmp_path, manifest_id, UnsafeManifest, "'same'", "duplicated")


async def test_duplicate_spelled_as_text_and_base64_is_refused(lstore, tmp_path):
    entries = [inline_file("same", b"one"), inline_file(b"same", b"two")]
    manifest_id, _ = await nested(lstore, entries, sort=False)
    await refused(lstore, tmp_path, manifest_id, UnsafeManifest, "duplicated")


async def test_unsorted_entries_are_refused(lstore, tmp_path):
    entries = [inline_file("b", b"b"), inline_file("a", b"a")]
    manifest_id, _ = await nested(lstore, entries, sort=False)
    await refused(lstore, tmp_path, manifest_id, UnsafeManifest, "'a'", "out of order")


# ---------------------------------------------------------------- symlinks


async def test_symlink_and_directory_of_the_same_name_in_one_tree(lstore, tmp_path, outside):
    """The manifest tries to create `evil -> outside` and then write `evil/x` through it."""
    inner = await plant_tree(lstore, [inline_file("x", b"written through the link")])
    for target in (str(outside), "..", "../outside"):
        entries = [symlink("evil", target), dir_entry("evil", inner)]
        manifest_id, _ = await nested(lstore, entries, sort=False)
        await refused(lstore, tmp_path, manifest_id, UnsafeManifest, "'evil'")
        assert not (outside / "x").exists()
        assert not (tmp_path / "x").exists()


async def test_second_get_does_not_write_through_a_link_the_first_created(
    lstore, tmp_path, outside
):
    """Two manifests into one dest: the first plants `evil -> outside`, the second
    has a directory `evil` with a file in it."""
    dest = tmp_path / "dest"
    first = await plant_root(lstore, [symlink("evil", str(outside))])
    await get_into(lstore, first, dest)
    assert os.readlink(dest / "evil") == str(outside)

    inner = await plant_tree(lstore, [inline_file("x", b"written through the link")])
    second = await plant_root(lstore, [dir_entry("evil", inner), inline_file("z", b"z")])
    await refused(
        lstore, tmp_path, second, DestinationError, "evil", "not a directory", dest_may_exist=True
    )
    assert sorted(os.listdir(outside)) == ["victim"]
    assert os.readlink(dest / "evil") == str(outside)


@pytest.mark.parametrize("depth", [0, 1], ids=["top", "nested"])
@pytest.mark.parametrize("target_kind", ["absolute", "dotdot"])
async def test_preexisting_symlink_in_dest_is_not_followed(
    lstore, tmp_path, outside, depth, target_kind
):
    """dest already has `[a/]evil -> outside`; the manifest has a directory there."""
    dest = tmp_path / "dest"
    parent = dest / "a" if depth else dest
    parent.mkdir(parents=True)
    target = str(outside) if target_kind == "absolute" else "../" * (depth + 1) + "outside"
    os.symlink(target, parent / "evil")
    assert (parent / "evil" / "victim").exists()  # the link really reaches outside

    leaf = await plant_tree(
        lstore, [inline_file("victim", b"overwritten!"), inline_file("x", b"x")]
    )
    evil = dir_entry("evil", leaf, mode=0o777)
    root = [evil] if not depth else [dir_entry("a", await plant_tree(lstore, [evil]))]
    manifest_id = await plant_root(lstore, root)
    await refused(
        lstore,
        tmp_path,
        manifest_id,
        DestinationError,
        "evil",
        "not a directory",
        dest_may_exist=True,
    )
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "original\n"
    assert stat.S_IMODE(outside.stat().st_mode) != 0o777


async def test_preexisting_symlink_at_a_file_name_is_replaced_not_followed(
    lstore, tmp_path, outside
):
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside / "victim", dest / "f")
    manifest_id = await plant_root(lstore, [inline_file("f", b"new content", mode=0o600)])
    before = snapshot_tree(tmp_path, exclude=(dest,))
    await get_into(lstore, manifest_id, dest)
    assert not (dest / "f").is_symlink()
    assert (dest / "f").read_bytes() == b"new content"
    assert snapshot_tree(tmp_path, exclude=(dest,)) == before


async def test_symlinks_pointing_outside_are_created_but_never_written_through(
    lstore, tmp_path, outside
):
    """A link's target is data: stored as given, never followed by get."""
    dest = tmp_path / "dest"
    entries = [
        symlink("abs", str(outside / "victim")),
        symlink("up", ".."),
        symlink("dir", str(outside)),
        inline_file("victim", b"inside dest"),
    ]
    manifest_id = await plant_root(lstore, entries)
    before = snapshot_tree(tmp_path, exclude=(dest,))
    await get_into(lstore, manifest_id, dest)
    assert os.readlink(dest / "up") == ".."
    assert os.readlink(dest / "abs") == str(outside / "victim")
    assert (dest / "victim").read_bytes() == b"inside dest"
    assert snapshot_tree(tmp_path, exclude=(dest,)) == before


# ---------------------------------------------------------------- modes


async def test_setuid_setgid_bits_are_not_applied(lstore, tmp_path):
    inner = await plant_tree(lstore, [inline_file("tool", b"#!/bin/sh\n", mode=0o6755)])
    entries = [
        inline_file("suid", b"\x7fELF", mode=0o4755),
        inline_file("sgid", b"\x7fELF", mode=0o2711),
        dir_entry("sgid-dir", inner, mode=0o2775),
    ]
    dest = tmp_path / "dest"
    await get_into(lstore, await plant_root(lstore, entries), dest)
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "sgid").stat().st_mode) == 0o711
    assert stat.S_IMODE((dest / "sgid-dir").stat().st_mode) == 0o775
    assert stat.S_IMODE((dest / "sgid-dir" / "tool").stat().st_mode) == 0o755


# ---------------------------------------------------------------- chunks


async def test_chunk_stored_under_the_wrong_id_is_an_integrity_error(lstore, tmp_path):
    real = os.urandom(2000)
    claimed = hash_bytes(real)
    plant_frame(lstore, ObjectKind.CHUNK, claimed, codec.encode(os.urandom(2000)))
    entry = chunked_file("f", [(str(claimed), 2000)], file_digest=digest(real))
    manifest_id, _ = await nested(lstore, [entry])
    await refused(
        lstore,
        tmp_path,
        manifest_id,
        IntegrityError,
        f"chunk {claimed}",
        "corrupt",
        dest_may_exist=True,
    )
    assert not (tmp_path / "dest" / "sub" / "f").exists()


async def test_file_of_valid_chunks_with_wrong_whole_file_digest(lstore, tmp_path):
    one, two = os.urandom(1500), os.urandom(900)
    ids = [await plant_bytes(lstore, ObjectKind.CHUNK, c) for c in (one, two)]
    entry = chunked_file(
        "f", [(str(ids[0]), 1500), (str(ids[1]), 900)], file_digest=digest(two + one)
    )
    manifest_id, _ = await nested(lstore, [entry])
    await refused(
        lstore,
        tmp_path,
        manifest_id,
        IntegrityError,
        "sub/f",
        "content hashes to",
        dest_may_exist=True,
    )
    assert not (tmp_path / "dest" / "sub" / "f").exists()


async def test_inline_file_with_wrong_digest(lstore, tmp_path):
    entry = inline_file("f", b"what the tree carries")
    entry["digest"] = digest(b"something else")
    manifest_id, _ = await nested(lstore, [entry])
    await refused(lstore, tmp_path, manifest_id, IntegrityError, "sub/f", dest_may_exist=True)
    assert not (tmp_path / "dest" / "sub" / "f").exists()


async def test_large_file_with_wrong_digest_leaves_no_partial_file(lstore, tmp_path):
    """Over the batch size a file is written in segments; a bad digest must abort it."""
    chunk = os.urandom(MAX_CHUNK)
    chunk_id = await plant_bytes(lstore, ObjectKind.CHUNK, chunk)
    count = (9 << 20) // MAX_CHUNK  # 9 MiB: over get's 8 MiB batch limit
    entry = chunked_file("big", [(str(chunk_id), MAX_CHUNK)] * count, file_digest=digest(b"x"))
    manifest_id, _ = await nested(lstore, [entry])
    await refused(lstore, tmp_path, manifest_id, IntegrityError, "sub/big", dest_may_exist=True)
    assert not (tmp_path / "dest" / "sub" / "big").exists()


@pytest.mark.parametrize("claimed", [500, 1999, 2001, MAX_CHUNK])
async def test_chunk_length_in_tree_differs_from_real_length(lstore, tmp_path, claimed):
    data = os.urandom(2000)
    chunk_id = await plant_bytes(lstore, ObjectKind.CHUNK, data)
    entry = chunked_file("f", [(str(chunk_id), claimed)], file_digest=digest(data))
    manifest_id, _ = await nested(lstore, [entry])
    await refused(
        lstore,
        tmp_path,
        manifest_id,
        FormatError,
        "sub/f",
        "2000 bytes",
        f"says {claimed}",
        dest_may_exist=True,
    )
    assert not (tmp_path / "dest" / "sub" / "f").exists()


async def test_chunk_length_over_the_manifest_maximum_is_refused_before_writing(lstore, tmp_path):
    data = os.urandom(MAX_CHUNK + 1)
    chunk_id = await plant_bytes(lstore, ObjectKind.CHUNK, data)
    entry = chunked_file("f", [(str(chunk_id), MAX_CHUNK + 1)], file_digest=digest(data))
    manifest_id, _ = await nested(lstore, [entry])
    await refused(lstore, tmp_path, manifest_id, UnsafeManifest, str(chunk_id), f"{MAX_CHUNK}")


@pytest.mark.parametrize(
    ("index_says", "limit"), [(64 << 20, MAX_CHUNK), (100, 100)], ids=["index-honest", "index-lies"]
)
async def test_decompression_bomb_chunk_is_refused(lstore, tmp_path, index_says, limit):
    """An honestly named chunk of 64 MiB of zeros (a ~2 KiB frame) with a small tree length.

    Its index gives either its real size (over the manifest's maximum: refused
    before reading) or the tree's 100 bytes (the frame header declares more:
    refused before inflating). Either way the error names the declared size.
    """
    bomb = bytes(64 << 20)
    bomb_id = hash_bytes(bomb)
    plant_frame(lstore, ObjectKind.CHUNK, bomb_id, codec.encode(bomb), index_says)
    entry = chunked_file("f", [(str(bomb_id), 100)], file_digest=digest(bytes(100)))
    manifest_id, _ = await nested(lstore, [entry])
    stored = (await Repository(lstore).index(manifest_id)).chunks[bomb_id].stored
    assert stored < 64 << 10
    await refused(
        lstore,
        tmp_path,
        manifest_id,
        IntegrityError,
        f"chunk {bomb_id}",
        f"declares {64 << 20} bytes",
        f"{limit}",
        dest_may_exist=True,
    )
    assert not (tmp_path / "dest" / "sub" / "f").exists()


def _frame_lying_about_its_size(real_size: int, claimed: int) -> bytes:
    """A single-segment frame whose 2-byte content-size field is rewritten to `claimed`."""
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(bytes(real_size))
    header = frame[4]
    assert header >> 6 == 1 and header & 0x20, "expected a single-segment frame, 2-byte FCS"
    assert 256 <= claimed < 65536 + 256
    patched = frame[:5] + (claimed - 256).to_bytes(2, "little") + frame[7:]
    assert zstandard.frame_content_size(patched) == claimed
    return patched


async def test_frame_inflating_past_its_declared_size_is_refused(lstore, tmp_path):
    real = bytes(60_000)
    blob = _frame_lying_about_its_size(len(real), 1000)
    lie_id = hash_bytes(bytes(1000))
    plant_frame(lstore, ObjectKind.CHUNK, lie_id, blob)  # the index says 1000, as the frame does
    entry = chunked_file("f", [(str(lie_id), 1000)], file_digest=digest(bytes(1000)))
    manifest_id, _ = await nested(lstore, [entry])
    await refused(
        lstore, tmp_path, manifest_id, IntegrityError, f"chunk {lie_id}", dest_may_exist=True
    )
    assert not (tmp_path / "dest" / "sub" / "f").exists()


@pytest.mark.parametrize(
    ("index_says", "problem"),
    [(1000, "declares 2000 bytes, more than the 1000-byte limit"), (3000, "index says 3000")],
    ids=["smaller", "bigger"],
)
async def test_index_lying_about_a_chunk_size_is_refused(lstore, tmp_path, index_says, problem):
    """An honest frame whose index entry gives another uncompressed size than it holds."""
    data = os.urandom(2000)
    chunk_id = plant_frame(
        lstore, ObjectKind.CHUNK, hash_bytes(data), codec.encode(data), index_says
    )
    entry = chunked_file("f", [(str(chunk_id), 2000)], file_digest=digest(data))
    manifest_id, _ = await nested(lstore, [entry])
    await refused(
        lstore,
        tmp_path,
        manifest_id,
        IntegrityError,
        f"chunk {chunk_id}",
        problem,
        dest_may_exist=True,
    )
    assert not (tmp_path / "dest" / "sub" / "f").exists()


@pytest.mark.parametrize("how", ["never-stored", "pack-deleted"])
async def test_missing_chunk_is_object_not_found(lstore, tmp_path, how):
    """The tree names a chunk the store lacks: never stored (so the manifest's index does
    not list it), or listed by the index in a pack of its own that has since gone."""
    if how == "never-stored":
        data = bytes(10)
        missing = fake_id("no such chunk")
    else:
        data = os.urandom(2000)
        missing = await plant_bytes(lstore, ObjectKind.CHUNK, data)
        pack = await plant_pack(lstore)
    entry = chunked_file("f", [(str(missing), len(data))], file_digest=digest(data))
    manifest_id, _ = await nested(lstore, [entry])
    if how == "pack-deleted":
        assert (await Repository(lstore).index(manifest_id)).chunks[missing].pack == pack
        await lstore.delete(Kind.PACK, pack)
    await refused(lstore, tmp_path, manifest_id, ObjectNotFound, str(missing), dest_may_exist=True)
    assert not (tmp_path / "dest" / "sub" / "f").exists()


# ---------------------------------------------------------------- frames of every kind


def _junk(data: bytes) -> bytes:
    return b"definitely not a zstd frame: " + data[:16]


def _no_content_size(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=False).compress(data)


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [(_junk, "not a zstd frame"), (_no_content_size, "does not declare its content size")],
    ids=["junk", "no-content-size"],
)
@pytest.mark.parametrize("where", ["manifest", "tree", "chunk"])
async def test_badly_framed_objects_are_integrity_errors(lstore, tmp_path, spoil, problem, where):
    chunk = os.urandom(3000)
    chunk_id = hash_bytes(chunk)
    tree_bytes = canon(
        tree_doc([chunked_file("f", [(str(chunk_id), 3000)], file_digest=digest(chunk))])
    )
    tree_id = hash_bytes(tree_bytes)
    totals = {"files": 1, "dirs": 0, "symlinks": 0, "bytes": 3000, "chunks": 1}
    manifest_bytes = canon(manifest_doc(tree_id, totals=totals))
    manifest_id = hash_bytes(manifest_bytes)
    for kind, object_id, data in (
        (ObjectKind.CHUNK, chunk_id, chunk),
        (ObjectKind.TREE, tree_id, tree_bytes),
    ):
        frame = spoil(data) if kind.value == where else codec.encode(data)
        plant_frame(lstore, kind, object_id, frame, len(data))  # the index gives the true size
    blob = spoil(manifest_bytes) if where == "manifest" else codec.encode(manifest_bytes)
    await plant_manifest_blob(lstore, manifest_id, blob)
    named = {"manifest": manifest_id, "tree": tree_id, "chunk": chunk_id}[where]
    await refused(
        lstore,
        tmp_path,
        manifest_id,
        IntegrityError,
        f"{where} {named}",
        problem,
        dest_may_exist=where == "chunk",
    )
    assert not (tmp_path / "dest" / "f").exists()


@pytest.mark.parametrize("where", ["manifest", "tree"])
async def test_tree_and_manifest_stored_under_the_wrong_id(lstore, tmp_path, where):
    good_tree = tree_doc([inline_file("f", b"data")])
    tree_id = await plant_doc(lstore, ObjectKind.TREE, good_tree)
    if where == "tree":
        tree_id = fake_id("forged tree")
        forged = canon(tree_doc([inline_file("f", b"forged data")]))
        plant_frame(lstore, ObjectKind.TREE, tree_id, codec.encode(forged))
        manifest_id = await plant_manifest(lstore, tree_id)
        named = tree_id
    else:
        manifest_id = fake_id("forged manifest")
        forged = canon(manifest_doc(tree_id))
        await plant_manifest_blob(lstore, manifest_id, codec.encode(forged))
        named = manifest_id
    await refused(lstore, tmp_path, manifest_id, IntegrityError, f"{where} {named}", "hashes to")


async def test_manifest_bomb_is_refused(lstore, tmp_path):
    data = b"{" + b" " * (MAX_MANIFEST_BYTES * 2) + b"}"
    manifest_id = await plant_bytes(lstore, Kind.MANIFEST, data)
    await refused(lstore, tmp_path, manifest_id, IntegrityError, f"manifest {manifest_id}")


# ---------------------------------------------------------------- tree structure


async def test_tree_naming_itself_is_refused_without_looping(lstore, tmp_path):
    """A tree stored under X whose content lists X as a subdirectory (and a forged 2-cycle)."""
    self_id = fake_id("self")
    doc = tree_doc([dir_entry("loop", self_id), inline_file("f", b"f")])
    plant_frame(lstore, ObjectKind.TREE, self_id, codec.encode(canon(doc)))
    manifest_id = await plant_manifest(lstore, self_id)
    await refused(lstore, tmp_path, manifest_id, IntegrityError, f"tree {self_id}")

    a, b = fake_id("cycle a"), fake_id("cycle b")
    plant_frame(lstore, ObjectKind.TREE, a, codec.encode(canon(tree_doc([dir_entry("b", b)]))))
    plant_frame(lstore, ObjectKind.TREE, b, codec.encode(canon(tree_doc([dir_entry("a", a)]))))
    manifest_id = await plant_manifest(lstore, a)
    await refused(lstore, tmp_path, manifest_id, IntegrityError, f"tree {a}")


async def test_honest_tree_naming_a_missing_subtree(lstore, tmp_path):
    missing = fake_id("gone")
    manifest_id, _ = await nested(lstore, [dir_entry("deeper", missing)])
    await refused(lstore, tmp_path, manifest_id, ObjectNotFound, str(missing))


async def test_manifest_naming_a_missing_tree(lstore, tmp_path):
    missing = fake_id("missing root")
    manifest_id = await plant_manifest(lstore, missing)
    await refused(lstore, tmp_path, manifest_id, ObjectNotFound, str(missing))


async def test_missing_manifest(lstore, tmp_path):
    missing = fake_id("missing manifest")
    await refused(lstore, tmp_path, missing, ObjectNotFound, str(missing))


async def test_chain_of_trees_deeper_than_the_limit(lstore, tmp_path):
    child = await plant_tree(lstore, [inline_file("bottom", b"b")])
    for _ in range(MAX_DEPTH + 5):
        child = await plant_tree(lstore, [dir_entry("d", child)])
    manifest_id = await plant_manifest(lstore, child)
    await refused(lstore, tmp_path, manifest_id, UnsafeManifest, f"deeper than {MAX_DEPTH}")


async def test_exponential_dag_of_trees_is_refused_quickly(lstore, tmp_path):
    """Each tree names the next one twice: 40 levels, 2**40 paths from 40 small objects.

    Trees may be shared (identical directories), but a get must not expand a
    manifest without bound: the manifest claims 1 file and 3 directories.
    """
    child = await plant_tree(lstore, [inline_file("f", b"f")])
    for _ in range(40):
        child = await plant_tree(lstore, [dir_entry("a", child), dir_entry("b", child)])
    totals = {"files": 1, "dirs": 3, "symlinks": 0, "bytes": 1, "chunks": 0}
    manifest_id = await plant_manifest(lstore, child, totals=totals)
    dest = tmp_path / "dest"
    before = snapshot_tree(tmp_path, exclude=(dest,))
    try:
        await asyncio.wait_for(get_into(lstore, manifest_id, dest), timeout=3)
    except CasError:
        pass
    except TimeoutError:
        pytest.fail("get kept expanding a 2**40-path tree DAG for 3 s instead of refusing it")
    else:
        pytest.fail("get accepted a tree DAG with 2**40 paths")
    assert snapshot_tree(tmp_path, exclude=(dest,)) == before


# ---------------------------------------------------------------- indexes
#
# A manifest's index says where its chunks and trees lie. It is as untrusted
# as any other stored object: a lying index may cost the get, never anything
# outside the destination, and never a file with the wrong content.


def _renamed(index: PackIndex) -> list[tuple[ObjectId, bytes]]:
    """The honest index, stored under a name whose content half is not its hash."""
    name, blob = encode_index(index)
    return [(ObjectId(bytes(name)[:16] + bytes(16)), blob)]


def _of_another_manifest(index: PackIndex) -> list[tuple[ObjectId, bytes]]:
    """Another manifest's index, named (correctly for its body) under this manifest's prefix."""
    _, blob = encode_index(PackIndex(fake_id("another manifest"), index.chunks, index.trees))
    body = codec.decode(blob, 1 << 30, kind="index", object_id="-")
    return [(index_name(index.manifest, body), blob)]


def _of_a_prefix_twin(index: PackIndex) -> list[tuple[ObjectId, bytes]]:
    """An honest index of a manifest whose id shares this one's first 16 bytes."""
    twin = ObjectId(bytes(index.manifest)[:16] + b"\xee" * 16)
    return [encode_index(PackIndex(twin, index.chunks, index.trees))]


@pytest.mark.parametrize(
    ("forge", "problem"),
    [
        (_renamed, "does not match its name"),
        (_of_another_manifest, "names another manifest"),
        (_of_a_prefix_twin, "serves"),
    ],
    ids=["name-not-content", "another-manifest", "prefix-twin"],
)
async def test_index_that_is_not_this_manifests_is_refused_before_writing(
    lstore, tmp_path, forge, problem
):
    """The only index listed under the manifest's prefix is not its own: the get stops at
    the root tree, naming the index."""
    written: list[tuple[ObjectId, bytes]] = []

    def keep(index: PackIndex) -> list[tuple[ObjectId, bytes]]:
        written.extend(forge(index))
        return written

    manifest_id = await plant_root(lstore, [inline_file("f", b"f")], indexes=keep)
    ((name, _),) = written
    await refused(lstore, tmp_path, manifest_id, IntegrityError, f"index {name}", problem)


async def test_manifest_without_an_index_is_object_not_found(lstore, tmp_path):
    manifest_id = await plant_root(lstore, [inline_file("f", b"f")], indexes=lambda _: [])
    await refused(lstore, tmp_path, manifest_id, ObjectNotFound, str(manifest_id), "no index")


async def test_damaged_index_beside_a_good_one_is_harmless(lstore, tmp_path):
    def both(index: PackIndex) -> list[tuple[ObjectId, bytes]]:
        return [encode_index(index), *_renamed(index)]

    manifest_id = await plant_root(lstore, [inline_file("f", b"good")], indexes=both)
    assert len([i async for i in lstore.list(Kind.INDEX, index_prefix(manifest_id))]) == 2
    await get_into(lstore, manifest_id, tmp_path / "dest")
    assert (tmp_path / "dest" / "f").read_bytes() == b"good"


def _misplaced(kind: ObjectKind, victim: ObjectId, other: ObjectId, how: str):
    """An index whose entry for `victim` points at the wrong bytes of its pack."""

    def forge(index: PackIndex) -> list[tuple[ObjectId, bytes]]:
        table = index.table(kind)
        loc = table[victim]
        if how == "past-the-end":
            table[victim] = loc._replace(offset=loc.offset + (1 << 20))
        elif how == "inside-the-frame":
            table[victim] = loc._replace(offset=loc.offset + 1, stored=loc.stored - 1)
        else:
            table[victim] = Location(*table[other])  # another object's frame
        return [encode_index(index)]

    return forge


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("past-the-end", "corrupt"),
        ("inside-the-frame", "not a zstd frame"),
        ("other-frame", "hashes to"),
    ],
    ids=["past-the-end", "inside-the-frame", "other-frame"],
)
@pytest.mark.parametrize("where", ["tree", "chunk"])
async def test_index_pointing_at_the_wrong_bytes_is_an_integrity_error(
    lstore, tmp_path, where, how, problem
):
    """The root tree, or a chunk of it, located outside its pack, mid-frame or at a neighbour.

    Whatever the store answers for those bytes, the error names the object the
    index misplaced (the one a user can look up in the manifest), not only the pack.
    """
    one, two = os.urandom(2000), os.urandom(1500)
    ids = [await plant_bytes(lstore, ObjectKind.CHUNK, c) for c in (one, two)]
    sub = await plant_tree(
        lstore, [chunked_file("g", [(str(ids[1]), 1500)], file_digest=digest(two))]
    )
    root = await plant_tree(
        lstore,
        [chunked_file("f", [(str(ids[0]), 2000)], file_digest=digest(one)), dir_entry("sub", sub)],
    )
    if where == "tree":
        kind, victim, other = ObjectKind.TREE, root, sub
    else:
        kind, victim, other = ObjectKind.CHUNK, ids[0], ids[1]
    manifest_id = await plant_manifest(lstore, root, indexes=_misplaced(kind, victim, other, how))
    await refused(
        lstore,
        tmp_path,
        manifest_id,
        IntegrityError,
        f"{where} {victim}",
        problem,
        dest_may_exist=where == "chunk",
    )
    assert not (tmp_path / "dest" / "f").exists()


# ---------------------------------------------------------------- formats


async def test_unknown_manifest_format(lstore, tmp_path):
    tree_id = await plant_tree(lstore, [inline_file("f", b"f")])
    manifest_id = await plant_manifest(lstore, tree_id, fmt="cas.manifest/2")
    await refused(lstore, tmp_path, manifest_id, FormatError, "unknown format", "cas.manifest/2")


async def test_unknown_tree_format(lstore, tmp_path):
    tree_id = await plant_tree(lstore, [inline_file("f", b"f")], fmt="cas.tree/99")
    manifest_id = await plant_manifest(lstore, tree_id)
    await refused(lstore, tmp_path, manifest_id, FormatError, "unknown format", "cas.tree/99")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"algorithm": "rabin"}, "unknown chunking algorithm 'rabin'"),
        ({"max_size": 1 << 40}, "max_size"),
        ({"max_size": "4096"}, "integers"),
        ({"min_size": 8192}, "min <= avg <= max"),
    ],
    ids=["algorithm", "huge-max", "string-max", "min-over-max"],
)
async def test_bad_chunker_params(lstore, tmp_path, change, problem):
    tree_id = await plant_tree(lstore, [inline_file("f", b"f")])
    manifest_id = await plant_manifest(lstore, tree_id, chunker={**CHUNKER, **change})
    await refused(lstore, tmp_path, manifest_id, FormatError, "chunker", problem)


PATHOLOGICAL_JSON = {
    "deeply-nested-array": b"[" * 100_000 + b"]" * 100_000,
    "nested-in-entries": b'{"entries":' + b"[" * 50_000 + b"]" * 50_000 + b',"format":"x"}',
    "huge-integer": b'{"entries":[],"format":' + b"9" * 5000 + b"}",
    "not-utf8": b'{"entries":[],"format":"\xff"}',
    "lone-surrogate-escape": b'{"entries":[],"format":"\\ud800"}',
    "json-array": b"[]",
    "empty": b"",
}


@pytest.mark.parametrize("where", ["manifest", "tree"])
@pytest.mark.parametrize("payload", PATHOLOGICAL_JSON.values(), ids=PATHOLOGICAL_JSON.keys())
async def test_pathological_json_is_a_format_error(lstore, tmp_path, where, payload):
    """Well-hashed, well-framed objects whose content is not a valid document."""
    kind = Kind.MANIFEST if where == "manifest" else ObjectKind.TREE
    object_id = await plant_bytes(lstore, kind, payload)
    named = object_id
    if where == "tree":
        manifest_id = await plant_manifest(lstore, object_id)
    else:
        manifest_id = object_id
    await refused(lstore, tmp_path, manifest_id, FormatError, f"{where} {named}")


# ---------------------------------------------------------------- properties


def _run_get(tmp: Path, plant) -> tuple[Exception | None, Path]:
    """Plant with `plant(store)`, get into tmp/dest; return the exception, if any."""
    dest = tmp / "dest"
    (tmp / "outside").mkdir()
    (tmp / "outside" / "victim").write_bytes(b"v")

    async def body():
        store = LocalStore(tmp / "store", fsync=False)
        try:
            manifest_id = await plant(store)
            before = snapshot_tree(tmp, exclude=(dest,))
            try:
                await asyncio.wait_for(get_into(store, manifest_id, dest), timeout=20)
            except CasError as exc:
                error = exc
            else:
                error = None
            assert snapshot_tree(tmp, exclude=(dest,)) == before, "get wrote outside dest"
            return error
        finally:
            await store.aclose()

    error = asyncio.run(body())
    assert leftovers(tmp) == []
    return error, dest


def _expected_unsafe(raw: bytes) -> bool:
    return raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw or len(raw) > MAX_NAME_BYTES


raw_names = st.one_of(
    st.binary(min_size=0, max_size=300),
    st.sampled_from([b".", b"..", b"", b"/", b"../x", b"a/..", b"/etc/passwd", b"\0", b"x" * 256]),
    st.lists(st.sampled_from([b"..", b"/", b".", b"a", b"\0", b"\xff"]), max_size=6).map(b"".join),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=raw_names,
    kind=st.sampled_from(["file", "dir", "symlink"]),
    mode=st.integers(min_value=0, max_value=0o7777),
)
def test_random_entry_names_never_escape(name, kind, mode):
    async def plant(store):
        if kind == "file":
            entry = inline_file(name, b"content", mode=mode)
        elif kind == "dir":
            inner = await plant_tree(store, [inline_file("inside", b"i")])
            entry = dir_entry(name, inner, mode=mode)
        else:
            entry = symlink(name, "../outside/victim")
        sub = await plant_tree(store, [entry])
        return await plant_root(store, [dir_entry("sub", sub)])

    with tempfile.TemporaryDirectory() as tmp:
        try:
            error, dest = _run_get(Path(tmp), plant)
            if _expected_unsafe(name):
                assert isinstance(error, UnsafeManifest), error
                assert not dest.exists()
            else:
                assert error is None, error
                sub = os.path.join(os.fsencode(dest), b"sub")
                assert os.listdir(sub) == [name]
                st_ = os.lstat(os.path.join(sub, name))
                if kind == "symlink":
                    assert stat.S_ISLNK(st_.st_mode)
                else:
                    assert stat.S_IMODE(st_.st_mode) == mode & 0o1777
        finally:
            make_writable(Path(tmp))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["file", "dir", "symlink", "..", "/", "", "AAAA", "a" * 64, "\0"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children)
    ),
    max_leaves=8,
)
ENTRY_KEYS = [
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
]
entry_like = st.dictionaries(st.sampled_from(ENTRY_KEYS), json_values, max_size=8)
tree_like = st.fixed_dictionaries(
    {
        "format": st.sampled_from(["cas.tree/1", "cas.tree/1", "cas.tree/2"]),
        "entries": st.lists(entry_like, max_size=4),
    }
).map(canon)
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    tree_like,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads, as_manifest=st.booleans())
def test_random_tree_and_manifest_payloads_are_cas_errors_or_harmless(payload, as_manifest):
    """Random documents, honestly stored: success or a `CasError`, never a crash or escape."""

    async def plant(store):
        kind = Kind.MANIFEST if as_manifest else ObjectKind.TREE
        object_id = await plant_bytes(store, kind, payload)
        return object_id if as_manifest else await plant_manifest(store, object_id)

    with tempfile.TemporaryDirectory() as tmp:
        try:
            _run_get(Path(tmp), plant)
        finally:
            make_writable(Path(tmp))


valid_entry = st.one_of(
    st.builds(
        lambda name, data, mode, mtime: inline_file(name, data, mode=mode, mtime_ns=mtime),
        st.binary(min_size=1, max_size=20),
        st.binary(max_size=40),
        st.integers(min_value=0, max_value=0o7777),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
    ),
    st.builds(symlink, st.binary(min_size=1, max_size=20), st.text(min_size=1, max_size=30)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(valid_entry, max_size=5), mutate=st.integers(0, 5), b64=st.booleans())
def test_random_trees_of_plausible_entries(entries, mutate, b64):
    """Near-valid trees (random names, modes, mtimes, possibly one field spoiled)."""

    async def plant(store):
        docs = [dict(e) for e in entries]
        if docs:
            victim = docs[mutate % len(docs)]
            if mutate == 1:
                victim["mode"] = -1
            elif mutate == 2:
                victim.pop("kind")
            elif mutate == 3 and "data" in victim:
                victim["data"] = "!!" if not b64 else base64.b64encode(b"x" * 99).decode()
        sub = await plant_tree(store, docs, sort=mutate != 4)
        return await plant_root(store, [dir_entry("sub", sub)])

    with tempfile.TemporaryDirectory() as tmp:
        try:
            _run_get(Path(tmp), plant)
        finally:
            make_writable(Path(tmp))
