"""A get killed (SIGKILL) in the middle of an in-place update leaves every file old or new."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import snapshot
from tests.delta_helpers import get, put

ROOT = Path(__file__).parent.parent
A_TIME = 1_600_000_000 * 10**9
B_TIME = A_TIME + 10**9


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, stamp in ((a, A_TIME), (b, B_TIME)):
        for i in range(300):
            path = root / f"d{i % 7}" / f"f{i:03}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(100_000))
            os.utime(path, ns=(stamp, stamp))
        big = root / "big.bin"
        big.write_bytes(os.urandom(12 << 20))
        os.utime(big, ns=(stamp, stamp))
    return a, b


def test_sigkill_mid_update_leaves_each_file_old_or_new(tmp_path):
    a, b = make_pair(tmp_path)
    store = tmp_path / "store"
    from cas.chunking import ChunkParams

    id_a, id_b = put(store, a, ChunkParams()), put(store, b, ChunkParams())
    old = {str(p.relative_to(a)): digest(p) for p in a.rglob("*.bin")}
    new = {str(p.relative_to(b)): digest(p) for p in b.rglob("*.bin")}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dest = tmp_path / "dest"
    mixed_seen = False
    for attempt in range(6):
        get(store, id_a, dest, delete=True)
        files = [dest / rel for rel in old]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cas_cli.main",
                "get",
                "-q",
                "--no-cache",
                "--no-files-cache",
                "--store",
                str(store),
                str(id_b),
                str(dest),
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            stamps = [p.stat().st_mtime_ns for p in files]
            if B_TIME in stamps and attempt % 2 == 0:
                break  # some files are new already: kill now
            if stamps.count(B_TIME) > len(stamps) // 3:
                break
        proc.kill()
        proc.wait()
        state = {}
        for rel in old:
            got = digest(dest / rel)
            assert got in (old[rel], new[rel]), f"{rel} is neither the old nor the new file"
            state[rel] = got == new[rel]
        if any(state.values()) and not all(state.values()):
            mixed_seen = True
            break
    assert mixed_seen, "no kill landed in the middle of the update"
    # A later get finishes the job and removes what the killed one was writing, at once
    # (its writer's lock is free), and says so.
    before = {k for k in snapshot(dest) if k.split("/")[-1].startswith(".cas-tmp-")}
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "cas_cli.main",
            "get",
            "--delete",
            "--json",
            "--no-cache",
            "--store",
            str(store),
            str(id_b),
            str(dest),
        ],
        env=env,
        capture_output=True,
        check=True,
    )
    report = json.loads(again.stdout)
    assert snapshot(dest) == snapshot(b)  # nothing else left behind
    assert report["leftovers_removed"] == len(before)


def test_a_dead_writers_temporary_goes_at_once_a_live_ones_stays(tmp_path):
    import fcntl

    from cas.get.fswrite import WRITE_PREFIX, remove_stale_temporaries

    dead = tmp_path / f"{WRITE_PREFIX}dead0"
    live = tmp_path / f"{WRITE_PREFIX}live0"
    aside = tmp_path / ".cas-tmp-aside0"  # set aside by a get: only removed when old
    for path in (dead, live, aside):
        path.write_bytes(b"partial")
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a get still writing it
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remove_stale_temporaries(dir_fd) == 1
    finally:
        os.close(dir_fd)
        os.close(holder)
    assert not dead.exists() and live.exists() and aside.exists()


_HOLDER = """
import sys, time
from cas.get.fswrite import Destination

out = Destination(sys.argv[1])
pin = out.pin((), "old.bin")
out.move_aside(("sub",), "gone")
print(pin, flush=True)
time.sleep(60)
"""


def _killed_get_with_pin_and_aside(dest: Path) -> subprocess.Popen:
    """A process that pinned a file and set a directory aside, as a get does, then waits."""
    (dest / "sub" / "gone").mkdir(parents=True)
    (dest / "sub" / "gone" / "f").write_bytes(b"old directory content")
    (dest / "old.bin").write_bytes(b"old bytes")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(dest)], env=env, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline().strip()
    return proc


def _temporaries(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for p in dest.rglob(".cas-tmp-*"))


def test_a_killed_gets_pins_and_asides_go_with_the_next_get_a_live_ones_stay(tmp_path):
    from cas.get.fswrite import Destination

    dest = tmp_path / "dest"
    proc = _killed_get_with_pin_and_aside(dest)
    try:
        left = _temporaries(dest)
        assert len(left) == 3  # its owner file and pin in the root, the aside in sub/
        with Destination(dest) as out:  # the first get is alive: nothing of it is touched
            out.make_dir((), "sub")
            assert out.leftovers_removed == 0
        assert _temporaries(dest) == left
    finally:
        proc.kill()
        proc.wait()
    with Destination(dest) as out:
        out.make_dir((), "sub")
        assert out.leftovers_removed == 3
    assert _temporaries(dest) == []
    assert (dest / "old.bin").read_bytes() == b"old bytes"  # a pin is only a second name
