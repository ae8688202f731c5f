"""`cas diff A B`: added, removed, changed paths with sizes, and the bytes of new chunks."""

from __future__ import annotations

import json
import os

from tests.delta_helpers import manifest_chunks
from tests.test_cli import cas


def test_diff_lists_changes_and_counts_new_chunks(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shared = os.urandom(200_000)
    for root in (a, b):
        (root / "d").mkdir(parents=True)
        (root / "d" / "same.bin").write_bytes(shared)
    (a / "changed.bin").write_bytes(os.urandom(50_000))
    (b / "changed.bin").write_bytes(os.urandom(60_000))
    (a / "removed.txt").write_text("bye\n")
    (b / "added.bin").write_bytes(shared)  # same bytes as an existing file: no new chunk
    (a / "mode").write_text("m")
    (b / "mode").write_text("m")
    (b / "mode").chmod(0o700)
    (a / "t").mkdir()
    (b / "t").write_bytes(b"now a file")
    os.symlink("d", b / "link")
    store = str(tmp_path / "store")
    id_a = cas("put", "--store", store, str(a)).stdout.decode().strip()
    id_b = cas("put", "--store", store, str(b)).stdout.decode().strip()
    doc = json.loads(cas("diff", "--store", store, "--json", id_a, id_b).stdout)
    assert [c["path"] for c in doc["added"]] == ["added.bin", "link"]
    assert doc["added"][0]["new"] == {"kind": "file", "size": 200_000}
    assert [c["path"] for c in doc["removed"]] == ["removed.txt"]
    changed = {c["path"]: c for c in doc["changed"]}
    assert sorted(changed) == ["changed.bin", "mode", "t"]
    assert changed["changed.bin"]["old"]["size"] == 50_000
    assert changed["changed.bin"]["new"]["size"] == 60_000
    assert changed["t"]["old"] == {"kind": "dir", "size": None}
    from cas.ids import ObjectId

    new = set(manifest_chunks(tmp_path / "store", ObjectId.parse(id_b))) - set(
        manifest_chunks(tmp_path / "store", ObjectId.parse(id_a))
    )
    assert doc["new_chunks"] == len(new) > 0
    assert doc["new_chunk_bytes"] == 60_000  # changed.bin's chunks only
    proc = cas("diff", "--store", store, id_a, id_b)
    lines = proc.stdout.decode().splitlines()
    assert "+ added.bin  (195.3 KiB)" in lines and "M t  (dir -> 10 B)" in lines
    assert "3 changed" in proc.stderr.decode()


def test_diff_of_a_manifest_with_itself_is_empty(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(os.urandom(10_000))
    store = str(tmp_path / "store")
    id_a = cas("put", "--store", store, str(tmp_path / "a")).stdout.decode().strip()
    doc = json.loads(cas("diff", "--store", store, "--json", id_a, id_a).stdout)
    assert doc == {"added": [], "removed": [], "changed": [], "new_chunks": 0, "new_chunk_bytes": 0}
