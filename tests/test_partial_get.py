"""Partial get: --include/--exclude, ID:PATH, and only the trees on the way are read."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cas.errors import ObjectNotFound, UsageError
from cas.get.browse import lookup
from cas.get.selection import Selection
from cas.objects import DirEntry
from cas.packindex import encode_index
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from tests.conftest import snapshot
from tests.delta_helpers import get, put


@pytest.fixture
def build(tmp_path):
    root = tmp_path / "build"
    for rel, data in {
        "tests/unit/test_a.py": b"a" * 5000,
        "tests/unit/data.bin": os.urandom(9000),
        "tests/int/test_b.py": b"b" * 100,
        "src/lib.o": os.urandom(20_000),
        "src/main.py": b"main",
        "third_party/big/x.o": os.urandom(30_000),
        "third_party/big/tests/test_c.py": b"c",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "tests" / "empty").mkdir()
    store = tmp_path / "store"
    return root, store, put(store, root)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_include_takes_matching_files_and_the_directories_on_the_way(tmp_path, build):
    _src, store, manifest_id = build
    dest = tmp_path / "dest"
    get(store, manifest_id, dest, selection=Selection(["*.py"], ["third_party/"]))
    assert listing(dest) == [
        "src",
        "src/main.py",
        "tests",
        "tests/int",
        "tests/int/test_b.py",
        "tests/unit",
        "tests/unit/test_a.py",
    ]


def test_anchored_directory_include_takes_everything_under_it(tmp_path, build):
    src, store, manifest_id = build
    dest = tmp_path / "dest"
    get(store, manifest_id, dest, selection=Selection(["/tests/"]))
    assert snapshot(dest) == {k: v for k, v in snapshot(src).items() if k.startswith("tests")}


def _drop_trees(store: Path, manifest_id, keep: tuple[str, ...]) -> None:
    """Make the trees of every top-level directory except `keep` missing from the store.

    They share a pack with everything else, so the manifest's index is replaced
    by one that does not list them: reading one is then `ObjectNotFound`, as
    for a tree that was never stored.
    """

    async def run():
        local = LocalStore(store, fsync=False)
        try:
            repo = Repository(local)
            manifest = await repo.get_manifest(manifest_id)
            index = await repo.index(manifest_id)
            for name in ("src", "third_party", "tests"):
                if name in keep:
                    continue
                found = await lookup(repo, manifest, name)
                assert isinstance(found.entry, DirEntry)
                del index.trees[found.entry.tree]
            assert index.name is not None
            new_name, blob = encode_index(index)
            await local.delete(Kind.INDEX, index.name)
            await local.put_if_absent(Kind.INDEX, new_name, blob)
        finally:
            await local.aclose()

    asyncio.run(run())


def test_only_the_trees_on_the_way_are_read(tmp_path, build):
    """The other top-level trees are gone from the store, and the partial gets still work."""
    src, store, manifest_id = build
    _drop_trees(store, manifest_id, keep=("tests",))
    dest = tmp_path / "dest"
    get(store, manifest_id, dest, selection=Selection(["/tests/unit/*.py"]))
    assert listing(dest) == ["tests", "tests/unit", "tests/unit/test_a.py"]
    sub = tmp_path / "sub"
    get(store, manifest_id, sub, subpath="tests")
    assert snapshot(sub) == {
        k.removeprefix("tests/"): v for k, v in snapshot(src).items() if k.startswith("tests/")
    }


def test_subtree_get_with_delete_keeps_the_rest_of_a_bigger_destination(tmp_path, build):
    src, store, manifest_id = build
    dest = tmp_path / "unit"
    dest.mkdir()
    (dest / "stale.py").write_bytes(b"stale")
    get(store, manifest_id, dest, subpath="/tests/unit/", delete=True)
    assert listing(dest) == ["data.bin", "test_a.py"]
    assert (dest / "data.bin").read_bytes() == (src / "tests/unit/data.bin").read_bytes()


@pytest.mark.parametrize(
    ("options", "error", "needle"),
    [
        ({"selection": Selection(["*.rs"])}, ObjectNotFound, "'*.rs'"),
        ({"selection": Selection(["*.py", "/docs/"])}, ObjectNotFound, "'/docs/'"),
        ({"subpath": "nope"}, ObjectNotFound, "nope"),
        ({"subpath": "src/main.py"}, UsageError, "not a directory"),
        ({"subpath": "../src"}, UsageError, ".."),
    ],
)
def test_selections_that_match_nothing_are_clear_errors(tmp_path, build, options, error, needle):
    _src, store, manifest_id = build
    dest = tmp_path / "dest"
    with pytest.raises(error, match=needle.replace("*", r"\*")):
        get(store, manifest_id, dest, **options)
    assert not dest.exists()


def test_selection_prunes_only_where_no_include_can_match():
    sel = Selection(["/tests/unit/*.py", "docs/"], ["build/"])
    assert sel.enters(("tests",)) and sel.enters(("tests", "unit"))
    assert sel.enters(("anything",))  # 'docs/' may match at any depth
    assert not sel.enters(("build",))
    anchored = Selection(["/tests/unit/*.py"])
    assert not anchored.enters(("src",))
    assert not anchored.enters(("tests", "int"))
    assert anchored.selects("tests/unit/a.py") and not anchored.selects("tests/unit/a.txt")
    assert anchored.unmatched() == []
