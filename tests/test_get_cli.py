"""`cas get` options from the command line: summary, --json, --dry-run, patterns, ID:PATH."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import snapshot
from tests.test_cli import cas


@pytest.fixture
def pair(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shared = os.urandom(300_000)
    for root in (a, b):
        (root / "lib").mkdir(parents=True)
        (root / "lib" / "same.so").write_bytes(shared)
        (root / "README").write_text("readme\n")
    (a / "app").write_bytes(os.urandom(200_000))
    (b / "app").write_bytes(os.urandom(200_000))
    (a / "old.o").write_bytes(b"o" * 9000)
    store = str(tmp_path / "store")
    id_a = cas("put", "--store", store, str(a)).stdout.decode().strip()
    id_b = cas("put", "--store", store, str(b)).stdout.decode().strip()
    return a, b, store, id_a, id_b


def test_summary_line_and_json_name_every_source(tmp_path, pair):
    _a, b, store, id_a, id_b = pair
    dest = tmp_path / "dest"
    cas("get", "--store", store, "--no-cache", id_a, str(dest))
    proc = cas("get", "--store", store, "--no-cache", id_b, str(dest))
    line = proc.stderr.decode().strip()
    assert line.startswith("got 1 files written") and "2 untouched" in line
    assert "1 files not in the manifest kept (--delete removes them)" in line
    assert "from the store" in line and "destination" in line and "/s)" in line
    doc = json.loads(
        cas("get", "--store", store, "--json", "--delete", id_b, str(dest)).stdout.decode()
    )
    assert doc["files"] == 0 and doc["files_untouched"] == 3 and doc["deleted"] == 1
    assert doc["bytes_from_store"] == 0
    assert snapshot(dest) == snapshot(b)


def test_dry_run_reports_per_source_and_writes_nothing(tmp_path, pair):
    a, _b, store, id_a, id_b = pair
    dest = tmp_path / "dest"
    cas("get", "--store", store, "--no-cache", id_a, str(dest))
    before = snapshot(dest)
    doc = json.loads(
        cas(
            "get", "--store", store, "--no-cache", "--json", "--dry-run", id_b, str(dest)
        ).stdout.decode()
    )
    assert snapshot(dest) == before
    assert doc["dry_run"] is True and doc["files"] == 1 and doc["files_untouched"] == 2
    assert doc["sources"]["store"]["files"] == 1 and doc["sources"]["store"]["bytes"] == 200_000
    assert doc["extra_paths"] == ["old.o"]
    text = cas(
        "get", "--store", store, "--dry-run", "--seed", str(a), id_b, str(tmp_path / "new")
    ).stderr.decode()
    assert not (tmp_path / "new").exists()
    assert "would write 3 files" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:]}
    assert rows["seed"][0] == "1" and rows["store"][0] == "1"  # lib/same.so; app
    assert rows["seed"][2:] == ["293.0", "KiB"]  # README is inline (comes with its tree)


def test_pattern_matching_nothing_exits_3_and_writes_nothing(tmp_path, pair):
    _a, _b, store, _id_a, id_b = pair
    dest = tmp_path / "dest"
    proc = cas("get", "--store", store, "--include", "*.rs", id_b, str(dest), check=False)
    assert proc.returncode == 3
    assert proc.stderr.decode().strip() == (
        "cas: error: nothing in the manifest matches --include '*.rs'"
    )
    assert not dest.exists()


def test_id_colon_path_and_include(tmp_path, pair):
    _a, b, store, _id_a, id_b = pair
    cas("get", "--store", store, f"{id_b}:lib", str(tmp_path / "lib"))
    assert snapshot(tmp_path / "lib") == {
        k.removeprefix("lib/"): v for k, v in snapshot(b).items() if k.startswith("lib/")
    }
    cas("get", "--store", store, "--include", "README", id_b, str(tmp_path / "r"))
    assert sorted(os.listdir(tmp_path / "r")) == ["README"]
    proc = cas("get", "--store", store, f"{id_b}:nope", str(tmp_path / "x"), check=False)
    assert proc.returncode == 3 and "nope" in proc.stderr.decode()


def test_seed_that_is_not_a_directory_is_a_usage_error(tmp_path, pair):
    _a, _b, store, _id_a, id_b = pair
    dest = tmp_path / "dest"
    proc = cas(
        "get", "--store", store, "--seed", str(tmp_path / "nope"), id_b, str(dest), check=False
    )
    assert proc.returncode == 2 and "--seed" in proc.stderr.decode()
    assert not dest.exists()
