"""Local-store specifics: layout, temp files, read-only objects, refusal of foreign dirs
and of format 1 stores."""

from __future__ import annotations

import asyncio
import json
import stat
import sys

import pytest

from cas.errors import UsageError
from cas.ids import hash_bytes
from cas.store.base import Kind
from cas.store.local import LocalStore


@pytest.mark.parametrize("tmpfile", [True, False])
def test_writes_leave_no_temporaries_and_objects_are_read_only(tmp_path, tmpfile):
    store = LocalStore(tmp_path / "s", fsync=True)
    store.files.tmpfile_ok = tmpfile
    items = [(hash_bytes(b"%d" % i), b"data %d" % i) for i in range(20)]
    assert asyncio.run(store.put_many(Kind.PACK, items)) == [True] * 20
    assert list((tmp_path / "s" / "tmp").iterdir()) == []
    for object_id, data in items:
        path = tmp_path / "s" / "pack" / str(object_id)[:2] / str(object_id)
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o444


def test_refuses_a_non_empty_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a cas store"):
        LocalStore(tmp_path / "home")
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["precious.txt"]


async def test_a_store_created_before_the_gc_namespace_lists_it_empty(tmp_path):
    """Stores made by earlier versions have no gc/ directory until the first record."""
    import shutil

    from cas.ids import hash_bytes
    from cas.store.base import Kind
    from cas.store.local import LocalStore

    store = LocalStore(tmp_path / "s", fsync=False)
    shutil.rmtree(tmp_path / "s" / "gc")
    assert [i async for i in store.list(Kind.GC)] == []
    assert await store.put_if_absent(Kind.GC, hash_bytes(b"r"), b"r") is True
    assert [i.id async for i in store.list(Kind.GC)] == [hash_bytes(b"r")]


def test_a_new_store_is_format_2_with_a_directory_per_namespace(tmp_path):
    LocalStore(tmp_path / "s", fsync=False)
    marker = json.loads((tmp_path / "s" / "cas-store.json").read_text())
    assert marker == {"layout": "cas.local-store/2"}
    assert {p.name for p in (tmp_path / "s").iterdir()} == {
        "cas-store.json",
        "pack",
        "index",
        "manifest",
        "gc",
        "refs",
        "tmp",
    }


def _format_1_store(root):
    """What the previous version of cas left: marker, one file per chunk and tree."""
    for name in ("chunk/ab", "tree/cd", "manifest", "gc", "refs", "tmp"):
        (root / name).mkdir(parents=True)
    (root / "chunk" / "ab" / ("ab" * 32)).write_bytes(b"frame")
    (root / "cas-store.json").write_text(json.dumps({"layout": "cas.local-store/1"}) + "\n")


@pytest.mark.parametrize("create", [True, False])
def test_a_format_1_store_is_refused_in_one_line_and_left_alone(tmp_path, create):
    root = tmp_path / "old"
    _format_1_store(root)
    before = sorted(root.rglob("*"))
    with pytest.raises(UsageError) as raised:
        LocalStore(root, create=create)
    assert str(raised.value) == (
        f"{root} is a format 1 store (cas.local-store/1); this cas reads and writes "
        "format 2 only: put into a new store"
    )
    assert sorted(root.rglob("*")) == before


def test_an_unknown_layout_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "cas-store.json").write_text('{"layout": "cas.local-store/9"}')
    with pytest.raises(UsageError, match=r"unsupported store layout 'cas\.local-store/9'"):
        LocalStore(tmp_path / "s")
    (tmp_path / "s" / "cas-store.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="unsupported store layout None"):
        LocalStore(tmp_path / "s")


def test_the_cli_names_a_format_1_store_in_one_line(tmp_path):
    """Any command on a format 1 store, e.g. `cas refs`, stops with that line and exit 2."""
    import subprocess

    root = tmp_path / "old"
    _format_1_store(root)
    proc = subprocess.run(
        [sys.executable, "-m", "cas_cli.main", "refs", "--store", str(root)],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == UsageError.exit_code
    assert proc.stderr.decode() == (
        f"cas: error: {root} is a format 1 store (cas.local-store/1); this cas reads and "
        "writes format 2 only: put into a new store\n"
    )


async def test_get_range_is_one_pread_of_exactly_the_range(tmp_path):
    store = LocalStore(tmp_path / "s", fsync=False)
    data = bytes(range(256)) * 64
    object_id = hash_bytes(data)
    await store.put_if_absent(Kind.PACK, object_id, data)
    assert await store.get_range(Kind.PACK, object_id, 1000, 3000) == data[1000:4000]
    await store.aclose()


def test_a_store_whose_creation_was_killed_before_its_marker_is_finished(tmp_path):
    """`cas put` killed while it created the store: the re-run must not call it foreign."""
    root = tmp_path / "s"
    for name in ("pack", "index", "manifest", "gc", "refs", "tmp"):
        (root / name).mkdir(parents=True)
    (root / "tmp" / "marker.0123456789abcdef").write_text('{"layout": "cas.local-store/2"}\n')
    store = LocalStore(root, fsync=False)
    assert store.created
    assert json.loads((root / "cas-store.json").read_text()) == {"layout": "cas.local-store/2"}
    # (the dead creator's marker temp stays in tmp/ until temps a day old go: another
    # process creating the store at this moment may own it)
    # Anything else in such a directory still makes it foreign.
    (tmp_path / "t" / "pack" / "ab").mkdir(parents=True)
    with pytest.raises(UsageError, match="not a cas store"):
        LocalStore(tmp_path / "t")
