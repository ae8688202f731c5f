"""restic: a local repository (always encrypted; format 2, compression `auto`).

`backup` runs in the tree with `.` as its path, so snapshots hold the tree's
contents at their root and a re-put of the same directory finds its parent
snapshot (restic's files cache); `restore --target` into a directory holding
A overwrites B's files and leaves files B lacks. restic has no data cache a
later restore could use, so the "A cached" case is a plain restore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from measure import Sample, dir_bytes, run
from steps import GET_B_INTO_A

from tools.base import Tool, version_line


class Restic(Tool):
    key = "restic"
    label = "restic"
    commands = ("restic",)
    known_limits: ClassVar[dict[str, str]] = {
        GET_B_INTO_A: "restic before 0.16 stops at symlinks that already exist "
        "in the target (`file exists`), so it cannot update a directory holding A"
    }

    @classmethod
    def version(cls) -> str:
        return version_line(["restic", "version"])

    def __init__(self, root: Path, level: int) -> None:
        super().__init__(root, level)
        self.repo = root / "repo"
        self.ids: dict[str, str] = {}

    def restic_env(self) -> dict[str, str]:
        return self.env(
            RESTIC_REPOSITORY=str(self.repo),
            RESTIC_PASSWORD="benchmark",
            RESTIC_CACHE_DIR=str(self.root / "cache"),
            RESTIC_PROGRESS_FPS="0.1",
        )

    def setup(self) -> None:
        run([["restic", "init", "--repository-version", "2"]], env=self.restic_env())

    def put(self, src: Path, name: str) -> Sample:
        s = run(
            [["restic", "backup", "--json", "--host", "bench", "--compression", "auto", "."]],
            env=self.restic_env(),
            cwd=src,
        )
        for line in s.stdout.splitlines():
            if line.startswith(b"{"):
                msg = json.loads(line)
                if msg.get("message_type") == "summary":
                    self.ids[name] = msg["snapshot_id"]
        return s

    def get(self, name: str, dest: Path, cache: str) -> Sample:
        return run(
            [["restic", "restore", self.ids[name], "--target", str(dest)]], env=self.restic_env()
        )

    def stored(self) -> int:
        return dir_bytes(self.repo)
