"""Bounded memory: peak RSS does not grow with the size of a file (invariant 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cas.ids import ObjectId

ROOT = Path(__file__).parent.parent


def peak_rss_mb(args: list[str], env: dict) -> float:
    """Run one cas command in a child and return the child's peak RSS."""
    # VmHWM, not ru_maxrss: Linux carries the parent's peak across fork and exec into
    # ru_maxrss, so a child of a large pytest process would report pytest's size.
    code = (
        "import re, sys\n"
        "from cas_cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "status = open('/proc/self/status').read()\n"
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    )
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def test_put_and_get_of_a_large_file_stay_small(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    block = os.urandom(1 << 20)
    with open(src / "big.bin", "wb") as f:  # 768 MiB: 3 x 256 MiB of shifted random blocks
        for i in range(768):
            f.write(block[i % 997 :] + block[: i % 997])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAS_CACHE_SIZE": "0"}
    store = str(tmp_path / "store")
    put_rss = peak_rss_mb(["put", "--store", store, "--level", "1", "-q", str(src)], env)
    manifest = subprocess.run(
        [sys.executable, "-m", "cas_cli.main", "put", "--store", store, "-q", str(src)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    get_rss = peak_rss_mb(["get", "--store", store, "-q", manifest, str(tmp_path / "out")], env)
    assert (tmp_path / "out" / "big.bin").stat().st_size == 768 << 20
    # The file is 768 MiB; the engines hold a few groups of 8 MiB at a time (typically
    # 70-110 MB peak here). The bound is the 300 MB every command must stay under.
    assert put_rss < 300, f"put peak RSS {put_rss:.0f} MB"
    assert get_rss < 300, f"get peak RSS {get_rss:.0f} MB"
    print(f"peak RSS: put {put_rss:.0f} MB, get {get_rss:.0f} MB")


def test_in_place_get_of_a_changed_large_file_stays_small(tmp_path):
    """The old file is cut and read back chunk by chunk, never held whole."""
    block = os.urandom(1 << 20)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAS_CACHE_SIZE": "0"}
    store = str(tmp_path / "store")
    ids = []
    for version in (0, 1):
        src = tmp_path / f"src{version}"
        src.mkdir()
        with open(src / "big.bin", "wb") as f:  # 512 MiB; version 1 differs in one MiB
            for i in range(512):
                f.write(
                    os.urandom(1 << 20)
                    if version and i == 100
                    else block[i % 997 :] + block[: i % 997]
                )
        ids.append(
            subprocess.run(
                [sys.executable, "-m", "cas_cli.main", "put", "--store", store, "-q", str(src)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    dest = str(tmp_path / "out")
    subprocess.run(
        [sys.executable, "-m", "cas_cli.main", "get", "--store", store, "-q", ids[0], dest],
        env=env,
        check=True,
    )
    rss = peak_rss_mb(["get", "--store", store, "-q", ids[1], dest], env)
    assert (tmp_path / "out" / "big.bin").read_bytes() == (
        tmp_path / "src1" / "big.bin"
    ).read_bytes()
    # Typically 75-110 MB, for a 512 MiB file.
    assert rss < 300, f"in-place get peak RSS {rss:.0f} MB"
    print(f"peak RSS: in-place get {rss:.0f} MB")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20 << 20), max_size=300))
def test_verify_reads_stay_within_the_byte_budget(sizes):
    """verify's reads cover every chunk once, in order, each within its decoded-bytes budget."""
    from cas.gc.verify import _BATCH, _BATCH_RAW_BYTES, _batches
    from cas.packindex import Location

    todo = {
        ObjectId(i.to_bytes(32, "big")): Location(ObjectId(bytes(32)), 0, 1, raw)
        for i, raw in enumerate(sizes)
    }
    batches = list(_batches(todo))
    assert [i for b in batches for i in b] == list(todo)
    for batch in batches:
        assert 1 <= len(batch) <= _BATCH
        total = sum(loc.raw for loc in batch.values())
        assert total <= _BATCH_RAW_BYTES or len(batch) == 1
