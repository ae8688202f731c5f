"""refs, ref rm, gc and verify as users run them, including hostile input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cas.pack import read_entries
from cas.store.local import LocalStore
from tests.test_cli import cas


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


def make_src(root: Path, seed: bytes = b"") -> Path:
    (root / "d").mkdir(parents=True)
    (root / "d" / "big").write_bytes(os.urandom(300_000))
    (root / "small").write_bytes(b"x" * 9000 + seed)
    return root


def put(store: str, src: Path, *extra: str) -> str:
    return cas("put", "--store", store, str(src), "-q", *extra).stdout.decode().strip()


def test_refs_lists_target_time_and_size_and_ref_rm_removes(store, tmp_path):
    first = put(store, make_src(tmp_path / "a"), "--ref", "ci/main/1")
    put(store, make_src(tmp_path / "b"), "--ref", "ci/pr/2/build")
    rows = json.loads(cas("refs", "--store", store, "--json").stdout)
    assert [r["name"] for r in rows] == ["ci/main/1", "ci/pr/2/build"]
    assert rows[0]["target"] == first and rows[0]["bytes"] == 309_000 and rows[0]["created"]
    text = cas("refs", "--store", store, "ci/main/").stdout.decode()
    assert text.startswith(f"ci/main/1\t{first}\t") and "ci/pr" not in text
    cas("ref", "rm", "--store", store, "ci/pr/2/build", "-q")
    assert [r["name"] for r in json.loads(cas("refs", "--store", store, "--json").stdout)] == [
        "ci/main/1"
    ]
    missing = cas("ref", "rm", "--store", store, "ci/pr/2/build", check=False)
    assert missing.returncode == 3 and b"no ref named" in missing.stderr


def test_gc_dry_run_then_real_run_and_everything_kept_still_reads(store, tmp_path):
    kept = put(store, make_src(tmp_path / "a"), "--ref", "ci/main/1")
    put(store, make_src(tmp_path / "b"), "--ref", "ci/pr/2/build")
    dry = json.loads(
        cas(
            "gc",
            "--store",
            store,
            "--grace",
            "0s",
            "--expire",
            "ci/pr/*",
            "--older-than",
            "0s",
            "--dry-run",
            "--json",
        ).stdout
    )
    assert dry["dry_run"] and dry["refs_expired"] == ["ci/pr/2/build"]
    assert dry["deleted"]["manifest"]["objects"] == 1 and dry["bytes_reclaimed"] > 300_000
    assert len(json.loads(cas("refs", "--store", store, "--json").stdout)) == 2  # nothing changed
    real = cas("gc", "--store", store, "--grace", "0s", "--expire", "ci/pr/*", "--older-than", "0s")
    assert b"deleted ref ci/pr/2/build" in real.stdout
    assert b"gc deleted 1 manifests" in real.stderr
    cas("get", "--store", store, "ci/main/1", str(tmp_path / "out"))
    assert cas("verify", "--store", store, kept).returncode == 0
    assert cas("verify", "--store", store, "--all").returncode == 0


def test_keep_last_keeps_the_newest(store, tmp_path):
    for i in range(4):
        put(store, make_src(tmp_path / f"s{i}", seed=bytes([i])), "--ref", f"ci/main/{i}")
    cas("gc", "--store", store, "--grace", "0s", "--keep-last", "2", "ci/main/*", "-q")
    rows = json.loads(cas("refs", "--store", store, "--json").stdout)
    assert [r["name"] for r in rows] == ["ci/main/2", "ci/main/3"]


def corrupt_one_chunk(store: str) -> tuple[str, str]:
    """Overwrite one chunk's frame inside its pack: (chunk id, pack id)."""
    found = (
        (pack, entry)
        for pack in sorted(p for p in (Path(store) / "pack").rglob("*") if p.is_file())
        for entry in read_entries(bytes.fromhex(pack.name), pack.read_bytes(), max_chunk=16 << 20)
        if entry.kind == "chunk"  # packs of trees hold none
    )
    pack, entry = next(found)
    data = bytearray(pack.read_bytes())
    data[entry.offset : entry.offset + entry.stored] = b"\xa5" * entry.stored
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    return str(entry.id), pack.name


def test_verify_names_the_corrupt_chunk_and_the_manifests_it_breaks(store, tmp_path):
    first = put(store, make_src(tmp_path / "a"), "--ref", "one")
    second = put(store, make_src(tmp_path / "b"), "--ref", "two")
    bad, pack = corrupt_one_chunk(store)
    proc = cas("verify", "--store", store, "--all", "--json", check=False)
    assert proc.returncode == 4
    report = json.loads(proc.stdout)
    problems = {p["id"]: p for p in report["problems"]}
    assert set(problems) == {bad, pack}  # the chunk, and its pack read whole; nothing else
    problem = problems[bad]
    assert problem["kind"] == "chunk" and problem["problem"].startswith("corrupt")
    assert set(problem["breaks"]) <= {first, second} and problem["breaks"]
    assert problems[pack]["kind"] == "pack" and problems[pack]["breaks"] == []
    refs_of = {first: "one", second: "two"}
    assert problem["breaks_refs"] == sorted(refs_of[m] for m in problem["breaks"])
    text = cas("verify", "--store", store, "one", "two", check=False)
    assert text.returncode == 4 and bad.encode() in text.stdout and b"breaks" in text.stdout
    broken = problem["breaks"][0]
    assert f"{broken} ({refs_of[broken]})".encode() in text.stdout  # known by its ref too


def test_verify_reports_missing_objects(store, tmp_path):
    manifest = put(store, make_src(tmp_path / "a"))
    for pack in (Path(store) / "pack").rglob("*"):
        if pack.is_file():
            pack.unlink()
    proc = cas("verify", "--store", store, manifest, check=False)
    assert proc.returncode == 3 and b": missing: pack " in proc.stdout  # missing, not corrupt
    assert b"; breaks " + manifest.encode() in proc.stdout


def test_verify_sample_checks_a_fraction(store, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(200):
        (src / f"f{i}").write_bytes(os.urandom(5000))
    put(store, src, "--ref", "r")
    report = json.loads(cas("verify", "--store", store, "r", "--sample", "0.25", "--json").stdout)
    assert 10 < report["chunks_checked"] < 120


def test_a_ref_to_a_missing_manifest(store, tmp_path):
    manifest = put(store, make_src(tmp_path / "a"), "--ref", "ci/x")
    next(p for p in (Path(store) / "manifest").rglob(manifest)).unlink()
    rows = json.loads(cas("refs", "--store", store, "--json").stdout)
    assert rows == [
        {"name": "ci/x", "target": manifest, "created": rows[0]["created"], "bytes": None}
    ]
    proc = cas("verify", "--store", store, "ci/x", check=False)
    assert proc.returncode == 3 and f"manifest {manifest}: missing".encode() in proc.stdout
    report = json.loads(cas("gc", "--store", store, "--grace", "0s", "--json").stdout)
    [unreadable] = report["unreadable"]
    assert (unreadable["kind"], unreadable["id"]) == ("manifest", manifest)
    assert unreadable["problem"].startswith("missing: ")
    got = cas("get", "--store", store, "ci/x", str(tmp_path / "out"), check=False)
    assert got.returncode == 3


@pytest.mark.parametrize(
    "args",
    [
        ["gc", "--grace", "1 day"],
        ["gc", "--grace", "-1s"],
        ["gc", "--grace", "7"],
        ["gc", "--grace", "1e9d"],
        ["gc", "--expire", "ci/*"],
        ["gc", "--older-than", "7d"],
        ["gc", "--expire", "ci/../x", "--older-than", "1d"],
        ["gc", "--expire", "", "--older-than", "1d"],
        ["gc", "--expire", "a[b", "--older-than", "1d"],
        [
            "gc",
            "--expire",
            "a",
            "--expire",
            "b",
            "--older-than",
            "1d",
            "--older-than",
            "2d",
            "--older-than",
            "3d",
        ],
        ["gc", "--keep-last", "-1", "ci/*"],
        ["gc", "--keep-last", "many", "ci/*"],
        ["gc", "--keep-last", "3", "ci /*"],
        ["gc", "--lease", "0s"],
        ["verify"],
        ["verify", "--all", "x"],
        ["verify", "--all", "--sample", "0"],
        ["verify", "--all", "--sample", "1.5"],
        ["verify", "--all", "--sample", "nan"],
        ["verify", "../ref"],
        ["ref", "rm", "../escape"],
        ["ref", "rm", "a//b"],
    ],
)
def test_hostile_options_are_one_line_usage_errors(store, tmp_path, args):
    LocalStore(store)
    before = sorted(str(p) for p in Path(store).rglob("*"))
    proc = cas(*args, "--store", store, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error:")
    assert sorted(str(p) for p in Path(store).rglob("*")) == before
