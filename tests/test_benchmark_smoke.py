"""The benchmark harness never rots: its smoke mode runs every installed tool on a tiny pair.

casync, restic and borg join when installed (benchmarks/setup-peers.sh); the
test passes without them too, and then checks that they were skipped with a note.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command is not installed")
def test_compare_smoke_restores_exactly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compare.py"),
            "--smoke",
            "--work",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "every restore was exact" in proc.stderr
    assert "| cas |" in proc.stdout and "| tar+zstd -3 |" in proc.stdout
    for peer in ("casync", "restic", "borg"):
        if shutil.which(peer):
            assert f"| {peer} |" in proc.stdout
        else:
            assert f"{peer} skipped: `{peer}` is not installed" in proc.stdout


def test_delta_get_smoke_fetches_only_what_the_machine_lacks(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "delta_get.py"),
            "--smoke",
            "--work",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("(")]
    assert len(rows) == 5 and all(line.endswith("yes") for line in rows)
    assert [line.split()[-2] for line in rows[1:]] == ["1.00"] * 4


@pytest.mark.skipif(
    shutil.which("zstd") is None or shutil.which("curl") is None,
    reason="the zstd and curl commands are needed for the .tar.zst baseline",
)
def test_remote_smoke_through_the_delaying_proxy_restores_exactly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "remote.py"),
            "--smoke",
            "--latency",
            "5-10ms",
            "--work",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "every restore through the link was exact" in proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| cas ")]
    assert len(rows) == 5 and all(row.endswith("| yes |") for row in rows)


def test_churn_smoke_keeps_every_kept_manifest_whole(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "churn.py"), "--smoke", "--work", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "every kept manifest verified after every gc" in proc.stderr
    for below in ("0", "0.5"):
        assert f"#### repack below {below}: every run" in proc.stdout


def test_gc_scale_smoke_deletes_dead_packs_and_repacks_sparse_ones(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gc_scale.py"),
            "--smoke",
            "--work",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "gc deleted the dead packs, repacked the half-live ones" in proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.startswith("| `gc")]) == 3
