"""What the benchmarks driving `cas mount` share: the mount and netproxy subprocesses, reading.

Used by mount_read.py, mount_targets.py, cache_read_path.py and mount_memory.py,
which run as scripts from benchmarks/ (so `import mountproc` finds this file);
`start_serve` (tests/serve_process.py) is passed on so they need no path set-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.serve_process import TOKENS, start_serve  # noqa: E402

__all__ = [
    "Mount",
    "Proxy",
    "cas",
    "cas_env",
    "ls_lr",
    "memory_mb",
    "read_file",
    "start_serve",
    "tree_files",
]

BUF = memoryview(bytearray(1 << 20))


def cas(env: dict[str, str], *args: str) -> str:
    """Run `cas ARGS` to completion and return its stdout; a failure ends the benchmark."""
    done = subprocess.run(
        [sys.executable, "-m", "cas", *args], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"cas {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


def cas_env(cache: Path) -> dict[str, str]:
    """The environment of every `cas` run: this checkout, chunk cache at CACHE, the read token."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CAS_CACHE_DIR": str(cache),
        "CAS_TOKEN": TOKENS["read"],
    }


def read_file(path: Path | str) -> int:
    """Read PATH in full (unbuffered, 1 MiB at a time); the number of bytes read."""
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(BUF):
            total += n
    return total


def tree_files(src: Path) -> list[tuple[str, int]]:
    """Regular files of SRC (relative path, size), in sorted walk order."""
    out = []
    for top, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = Path(top, name)
            if path.is_file() and not path.is_symlink():
                out.append((str(path.relative_to(src)), path.stat().st_size))
    return out


def ls_lr(point: Path) -> float:
    """Seconds an `ls -lR` of POINT takes (every directory listed and stat'ed, no file read)."""
    t0 = time.perf_counter()
    subprocess.run(["ls", "-lR", str(point)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of process PID from /proc, in MB (MiB)."""
    with open(f"/proc/{pid}/status") as f:
        return {
            key: int(value.split()[0]) / 1024
            for key, value in (line.split(":", 1) for line in f)
            if key in ("VmRSS", "VmHWM")
        }


class Mount:
    """`cas mount` in the foreground as a subprocess, mounted once the constructor returns.

    With `summary` the mount runs with --json and `stop()` returns that summary;
    `stderr` is where its messages go (None: this process's stderr).
    """

    def __init__(
        self,
        env: dict[str, str],
        store: str,
        manifest: str,
        point: Path,
        *extra: str,
        summary: bool = True,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> None:
        point.mkdir(exist_ok=True)
        self.point = point
        self.summary = summary
        self.started = time.perf_counter()
        json_flag = ["--json"] if summary else []
        command = ["--store", store, *json_flag, "mount", *extra, manifest, str(point)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cas", *command],
            env=env,
            stdout=subprocess.PIPE if summary else subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
        while not os.path.ismount(point):
            if self.proc.poll() is not None or time.perf_counter() - self.started > 120:
                raise SystemExit("mount did not come up")
            time.sleep(0.002)

    def hwm_mb(self) -> float:
        """Peak RSS of the mount process so far, in MB."""
        return memory_mb(self.proc.pid).get("VmHWM", 0.0)

    def stop(self) -> dict:
        """Unmount (SIGTERM) and wait; the --json summary ({} without `summary`)."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        return json.loads(out) if self.summary else {}


class Proxy:
    """benchmarks/netproxy.py as a subprocess (its own CPU, not this process's GIL)."""

    def __init__(self, upstream: str, latency: str, bandwidth: str, seed: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "netproxy.py"),
                "--upstream",
                upstream,
                "--latency",
                latency,
                "--bandwidth",
                bandwidth,
                "--seed",
                str(seed),
                "--listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # connections a stopped mount drops are logged there
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def take_stats(self) -> dict:
        """What crossed since the last call (and reset)."""
        request = urllib.request.Request(self.url + "/__netproxy__/stats", method="POST")
        with urllib.request.urlopen(request) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
