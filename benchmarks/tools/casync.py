"""casync: a chunk store plus one .caidx index per snapshot; extract can seed from local trees.

Defaults otherwise (`--with=best`, its own chunk sizes, zstd at its fixed level);
`make` keeps an encoder cache so a re-put of an unchanged tree can skip work;
`extract` into a directory that holds A uses that directory as a seed (its
default `--seed-output=yes`), and on a machine that got A before, A's
directory is passed as `--seed`.
"""

from __future__ import annotations

from pathlib import Path

from measure import Sample, dir_bytes, run

from tools.base import Tool


class Casync(Tool):
    key = "casync"
    label = "casync"
    commands = ("casync",)

    def __init__(self, root: Path, level: int) -> None:
        super().__init__(root, level)
        self.store = root / "store.castr"
        self.indexes = root / "indexes"

    def setup(self) -> None:
        self.indexes.mkdir(parents=True, exist_ok=True)

    def index(self, name: str) -> Path:
        return self.indexes / f"{name}.caidx"

    def put(self, src: Path, name: str) -> Sample:
        return run(
            [
                [
                    "casync",
                    "make",
                    f"--store={self.store}",
                    "--compression=zstd",
                    f"--cache={self.root / 'encoder-cache'}",
                    str(self.index(name)),
                    str(src),
                ]
            ]
        )

    def _extract(self, name: str, dest: Path, *extra: str) -> Sample:
        cmd = ["casync", "extract", f"--store={self.store}", *extra]
        return run([[*cmd, str(self.index(name)), str(dest)]])

    def get(self, name: str, dest: Path, cache: str) -> Sample:
        return self._extract(name, dest)

    def get_with_a(self, name: str, dest: Path, cache: str, a_dir: Path) -> Sample | None:
        return self._extract(name, dest, f"--seed={a_dir}")

    def stored(self) -> int:
        return dir_bytes(self.store) + dir_bytes(self.indexes)
