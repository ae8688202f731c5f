"""The interface every compared tool implements, so the runner treats them all alike.

A tool instance owns one scratch directory for one repetition: its store or
repository, its caches and the trees it restores. The runner calls, in order,
`setup`, `put` (A, then A again, then B), `get` into empty directories,
`get_with_a` on a machine that already holds A, and `get` into a directory
holding A; every call returns the measured `Sample` of one process tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from measure import Sample


class Tool(ABC):
    key: ClassVar[str]  # short name for directories and command lines
    label: ClassVar[str]  # row label in tables
    commands: ClassVar[tuple[str, ...]]  # executables that must be on PATH
    exact_mtimes: ClassVar[bool] = True  # restores every modification time exactly
    removes_stale: ClassVar[bool] = False  # a get into a dir holding A leaves exactly B
    # steps this tool is known to fail, and why (a failure there is a note, not an error)
    known_limits: ClassVar[dict[str, str]] = {}

    def __init__(self, root: Path, level: int) -> None:
        self.root = root
        self.level = level
        root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def missing(cls) -> str | None:
        """Why this tool cannot run here (None: it can)."""
        for command in cls.commands:
            if shutil.which(command) is None:
                return f"`{command}` is not installed (benchmarks/setup-peers.sh installs it)"
        return None

    @classmethod
    def version(cls) -> str:
        """One line naming the tool's version, for the report."""
        return version_line([cls.commands[0], "--version"])

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **extra}

    def setup(self) -> None:  # noqa: B027 (most tools need no set-up)
        """Create the empty store (not timed)."""

    @abstractmethod
    def put(self, src: Path, name: str) -> Sample:
        """Store the tree `src` as snapshot `name`."""

    @abstractmethod
    def get(self, name: str, dest: Path, cache: str) -> Sample:
        """Restore snapshot `name` into `dest` (empty, or holding an earlier snapshot).

        `cache` names the local cache to use; a new name is an empty cache.
        `extra["fetched"]` holds the bytes read from the store where known.
        """

    @classmethod
    def prepare(cls) -> None:
        """One-time set-up before any timed step (default: nothing)."""
        return None

    no_reuse_reason: ClassVar[str] = "has no local cache or seed to use"
    """Why `get_with_a` is None, for the note under the table."""

    def get_with_a(self, name: str, dest: Path, cache: str, a_dir: Path) -> Sample | None:
        """Restore into empty `dest` on a machine that got A before: `cache` was filled
        by that get and `a_dir` holds A. None: the tool has no way to use either."""
        return None

    @abstractmethod
    def stored(self) -> int:
        """Bytes the store or repository holds now (its file sizes)."""


def version_line(cmd: list[str]) -> str:
    """First line of a version command's output ('?' when it fails)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError:
        return "?"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "?"
