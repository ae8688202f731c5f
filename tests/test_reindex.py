"""Rebuilding a lost or damaged index from the packs' own trailers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cas.errors import ObjectNotFound
from cas.gc.reindex import rebuild_index, reindex
from cas.gc.verify import manifest_complete, verify_manifests
from cas.put.uploader import PutOptions, Uploader
from cas.repo import Repository
from cas.store.base import Kind
from cas.store.local import LocalStore
from tests.serve_process import TOKENS
from tests.test_cli import cas


def make_tree(root: Path) -> Path:
    for i in range(12):
        sub = root / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}").write_bytes(os.urandom(20_000 + i))
    (root / "tiny").write_bytes(b"inline")
    return root


async def test_an_index_rebuilt_from_the_packs_equals_the_one_the_put_wrote(tmp_path):
    store = LocalStore(tmp_path / "store", fsync=False)
    src = make_tree(tmp_path / "src")
    # Small packs: the objects spread over many of them, trees apart from chunks.
    result = await Uploader(Repository(store), PutOptions(pack_size=64 << 10)).put(src)
    (written,) = await Repository(store).indexes_of(result.manifest_id)
    rebuilt = await rebuild_index(Repository(store), result.manifest_id)
    assert rebuilt.chunks == written.chunks and rebuilt.trees == written.trees
    assert len(rebuilt.packs()) > 2


async def test_a_lost_index_is_rebuilt_and_the_manifest_reads_back_whole(tmp_path):
    store = LocalStore(tmp_path / "store", fsync=False)
    src = make_tree(tmp_path / "src")
    result = await Uploader(Repository(store), PutOptions()).put(src)
    (written,) = await Repository(store).indexes_of(result.manifest_id)
    await store.delete(Kind.INDEX, written.name)
    assert not await manifest_complete(Repository(store), result.manifest_id)
    name, _, created = await reindex(Repository(store), result.manifest_id)
    assert created and name == written.name  # the same content, so the same name
    assert (await verify_manifests(Repository(store), [result.manifest_id])).ok


async def test_a_missing_pack_is_named_and_nothing_is_written(tmp_path):
    store = LocalStore(tmp_path / "store", fsync=False)
    src = make_tree(tmp_path / "src")
    result = await Uploader(Repository(store), PutOptions()).put(src)
    (written,) = await Repository(store).indexes_of(result.manifest_id)
    chunk_pack = next(iter(written.chunks.values())).pack
    await store.delete(Kind.PACK, chunk_pack)
    await store.delete(Kind.INDEX, written.name)
    with pytest.raises(ObjectNotFound, match=r"chunk [0-9a-f]{64} of manifest .* is in no pack"):
        await reindex(Repository(store), result.manifest_id)
    assert [i async for i in store.list(Kind.INDEX)] == []


def test_cas_reindex_through_cas_serve(tmp_path, serve_process):
    serve_process.reset()
    src = make_tree(tmp_path / "src")
    # Create rights suffice: the runner that finds an index gone can write a new one.
    env = {"CAS_TOKEN": TOKENS["write"], "CAS_CACHE_DIR": str(tmp_path / "c")}
    store = serve_process.url
    manifest = cas("put", "--store", store, str(src), "-q", env=env).stdout.decode().strip()
    index_dir = serve_process.root / "index"
    for path in index_dir.rglob("*"):
        if path.is_file() and path.name.startswith(manifest[:32]):
            path.unlink()
    broken = cas("verify", "--store", store, manifest, env=env, check=False)
    assert broken.returncode == 3  # the index is missing, nothing is corrupt
    done = json.loads(cas("reindex", "--store", store, manifest, "--json", env=env).stdout)
    assert done["new"] and done["chunks"] == 12 and done["trees"] == 4
    assert cas("verify", "--store", store, manifest, env=env).returncode == 0
