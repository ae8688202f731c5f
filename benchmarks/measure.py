"""Run one step as its own process tree and measure it: wall, CPU of the tree, peak RSS.

CPU is user+sys of every process of the step. Where a cgroup can be made
(root, cgroup v1 `cpuacct` or v2), each step runs in its own and its CPU
is the group's usage: that counts processes nobody of the step reaps, such
as worker processes forked by a `forkserver`. Elsewhere it comes from GNU
`time` wrapped around each command (`RUSAGE_CHILDREN` of the wrapper covers
only the descendants it reaps; the `os.wait4` numbers of a child that Python
spawned start from the Python parent's own RSS). Peak RSS is the larger of GNU time's figure
(largest single process, summed over a pipeline's commands) and, when
`psutil` is installed (the `bench` extra), the peak of the whole tree's
summed RSS sampled every 100 ms, which counts worker processes too.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

TIME = "/usr/bin/time"
SAMPLE_EVERY = 0.1  # one scan of /proc costs ~2 ms of CPU


class StepFailed(RuntimeError):
    """A measured command exited non-zero; the message holds its stderr."""


@dataclass
class Sample:
    wall: float
    cpu: float
    rss: int
    foreign: float  # CPU share of other processes during the step (0..1 of all cores)
    stdout: bytes = b""
    extra: dict[str, float] = field(default_factory=dict)


def busy_seconds() -> float:
    """Busy CPU time of the whole machine from /proc/stat (0 where unavailable)."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuGroup:
    """A cgroup whose CPU usage covers every process started in it (None where none can be made)."""

    def __init__(self, path: Path, usage: Path, scale: float) -> None:
        self.path = path
        self._usage = usage
        self._scale = scale

    @classmethod
    def make(cls) -> CpuGroup | None:
        name = f"cas-bench-{os.getpid()}-{time.monotonic_ns()}"
        candidates = [
            (Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage", 1e-9),  # v1
            (Path("/sys/fs/cgroup"), "cpu.stat", 1e-6),  # v2: usage_usec
        ]
        for root, usage, scale in candidates:
            if not (root / "cgroup.procs").exists():
                continue
            try:
                (root / name).mkdir()
            except OSError:
                continue
            return cls(root / name, root / name / usage, scale)
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` started inside the group."""
        procs = str(self.path / "cgroup.procs")
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    def seconds(self) -> float:
        text = self._usage.read_text()
        if text.startswith("usage_usec"):
            text = text.split()[1]
        return float(text.split()[0]) * self._scale

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


class TreeRss:
    """Samples the summed RSS of some processes and all their descendants in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.peak = 0
        self._pids = pids
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import psutil
        except ImportError:
            return
        self._psutil = psutil
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        psutil = self._psutil
        while not self._stop.is_set():
            total = 0
            for pid in self._pids:
                with contextlib.suppress(psutil.Error):
                    top = psutil.Process(pid)
                    for p in [top, *top.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            if p.name() != "time":
                                total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(SAMPLE_EVERY)

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak


def run(
    cmds: list[list[str]],
    *,
    stdout_path: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Sample:
    """Run `cmds` as a shell-like pipeline; raise `StepFailed` if any part fails."""
    use_time = os.access(TIME, os.X_OK)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(stdout_path, "wb")) if stdout_path else None
        errs = [stack.enter_context(tempfile.TemporaryFile()) for _ in cmds]
        usage = [stack.enter_context(tempfile.NamedTemporaryFile("r")) for _ in cmds]
        procs: list[subprocess.Popen[bytes]] = []
        group = CpuGroup.make()
        if group is not None:
            stack.callback(group.remove)
        busy0 = busy_seconds()
        t0 = time.perf_counter()
        for i, cmd in enumerate(cmds):
            last = i == len(cmds) - 1
            argv = [TIME, "-f", "%U %S %M", "-o", usage[i].name, *cmd] if use_time else cmd
            if group is not None:
                argv = group.wrap(argv)
            p = subprocess.Popen(
                argv,
                stdin=procs[-1].stdout if procs else subprocess.DEVNULL,
                stdout=(out or subprocess.PIPE) if last else subprocess.PIPE,
                stderr=errs[i],
                env=env,
                cwd=cwd,
            )
            if procs and procs[-1].stdout is not None:
                procs[-1].stdout.close()
            procs.append(p)
        sampler = TreeRss([p.pid for p in procs])
        captured = b""
        if procs[-1].stdout is not None:
            captured = procs[-1].stdout.read()
            procs[-1].stdout.close()
        cpu = 0.0
        rss = 0
        codes = []
        for i, p in enumerate(procs):
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            codes.append(p.returncode)
            fields = usage[i].read().split()[-3:] if use_time else []
            if len(fields) == 3:
                cpu += float(fields[0]) + float(fields[1])
                rss += int(fields[2]) * 1024
            else:
                cpu += ru.ru_utime + ru.ru_stime
                rss += ru.ru_maxrss * 1024
        wall = time.perf_counter() - t0
        rss = max(rss, sampler.stop())
        if group is not None:
            cpu = group.seconds()
        busy = busy_seconds() - busy0
        if any(codes):
            messages = []
            for cmd, code, err in zip(cmds, codes, errs, strict=True):
                err.seek(0)
                text = err.read().decode(errors="replace")[-3000:]
                messages.append(f"$ {shlex.join(cmd)} -> {code}\n{text}")
            raise StepFailed("command failed:\n" + "\n".join(messages))
    ncpu = os.cpu_count() or 1
    foreign = max(0.0, busy - cpu) / (wall * ncpu) if wall > 0 else 0.0
    return Sample(wall, cpu, rss, min(1.0, foreign), captured)


def warm_page_cache(root: Path) -> int:
    """Read every file once so that all tools find the corpus in memory."""
    total = 0
    buf = bytearray(1 << 20)
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                continue
            with open(p, "rb", buffering=0) as f:
                while k := f.readinto(buf):
                    total += k
    return total


def dir_bytes(root: Path, *, skip: tuple[str, ...] = ()) -> int:
    """Sum of file sizes under `root` (top-level names in `skip` left out)."""
    size = 0
    if not root.exists():
        return 0
    for dirpath, dirs, names in os.walk(root):
        if dirpath == str(root):
            dirs[:] = [d for d in dirs if d not in skip]
            names = [n for n in names if n not in skip]
        for n in names:
            size += os.lstat(os.path.join(dirpath, n)).st_size
    return size


def rmtree(path: Path) -> None:
    """Remove a tree, including restored read-only directories."""
    if path.exists():
        for dirpath, dirs, _names in os.walk(path):
            for d in dirs:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        shutil.rmtree(path)
