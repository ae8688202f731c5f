"""Local-store specifics: layout, temp files, read-only objects, refusal of foreign dirs."""

from __future__ import annotations

import asyncio
import stat

import pytest

from cas.errors import UsageError
from cas.ids import hash_bytes
from cas.store.base import Kind
from cas.store.local import LocalStore


@pytest.mark.parametrize("tmpfile", [True, False])
def test_writes_leave_no_temporaries_and_objects_are_read_only(tmp_path, tmpfile):
    store = LocalStore(tmp_path / "s", fsync=True)
    store._tmpfile_ok = tmpfile
    items = [(hash_bytes(b"%d" % i), b"data %d" % i) for i in range(20)]
    assert asyncio.run(store.put_many(Kind.CHUNK, items)) == [True] * 20
    assert list((tmp_path / "s" / "tmp").iterdir()) == []
    for object_id, data in items:
        path = tmp_path / "s" / "chunk" / str(object_id)[:2] / str(object_id)
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
