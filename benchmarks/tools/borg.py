"""borg: an unencrypted local repository (`-e none`), `zstd,LEVEL` like the others.

`create` runs in the tree with `.` as its path (the files cache, keyed by
absolute path, lets a re-put skip unchanged files); `extract` runs in the
destination. Default chunker (buzhash, ~2 MiB chunks). borg has no data cache
a later extract could use, so the "A cached" case is a plain extract; an
extract into a directory holding A replaces B's files and leaves files B lacks.
"""

from __future__ import annotations

from pathlib import Path

from measure import Sample, dir_bytes, run

from tools.base import Tool


class Borg(Tool):
    key = "borg"
    label = "borg"
    commands = ("borg",)

    def __init__(self, root: Path, level: int) -> None:
        super().__init__(root, level)
        self.repo = root / "repo"

    def borg_env(self) -> dict[str, str]:
        return self.env(
            BORG_REPO=str(self.repo),
            BORG_BASE_DIR=str(self.root / "home"),
            BORG_PASSPHRASE="",
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )

    def setup(self) -> None:
        run([["borg", "init", "--encryption", "none"]], env=self.borg_env())

    def put(self, src: Path, name: str) -> Sample:
        cmd = ["borg", "create", "--compression", f"zstd,{self.level}", f"::{name}", "."]
        return run([cmd], env=self.borg_env(), cwd=src)

    def get(self, name: str, dest: Path, cache: str) -> Sample:
        dest.mkdir(parents=True, exist_ok=True)
        return run([["borg", "extract", f"::{name}"]], env=self.borg_env(), cwd=dest)

    def stored(self) -> int:
        return dir_bytes(self.repo)
