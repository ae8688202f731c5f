"""cas with a local directory store: put, get with its chunk cache, get --delete in place."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from measure import Sample, dir_bytes, run

from tools.base import Tool, version_line

STORE_SKIP = ("tmp",)  # upload staging, empty between commands


def default_cas() -> list[str]:
    """The `cas` beside this Python (the checkout's venv), else on PATH, else the module."""
    beside = Path(sys.executable).parent / "cas"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("cas")
    return [found] if found else [sys.executable, "-m", "cas_cli.main"]


class Cas(Tool):
    key = "cas"
    label = "cas"
    commands = ()
    removes_stale = True
    cas_cmd: ClassVar[list[str]] = default_cas()  # compare.py --cas replaces it

    def __init__(self, root: Path, level: int) -> None:
        super().__init__(root, level)
        self.store = root / "store"
        self.ids: dict[str, str] = {}
        self.puts = 0

    @classmethod
    def prepare(cls) -> None:
        """Compile cas's bytecode, as `pip install` does.

        A checkout installed in editable mode (or run with
        PYTHONDONTWRITEBYTECODE=1) would otherwise compile every module from
        source in each timed command: about 60 ms per command here.
        """
        if cls.cas_cmd != default_cas() or not cls.cas_cmd[0].startswith(sys.prefix):
            return
        script = (
            "import compileall, os, cas, cas_cli\n"
            "for m in (cas, cas_cli):\n"
            "    compileall.compile_dir(os.path.dirname(m.__file__), quiet=1)\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True)

    @classmethod
    def version(cls) -> str:
        return version_line([*cls.cas_cmd, "--version"])

    def cas_env(self, cache: str) -> dict[str, str]:
        env = self.env(CAS_CACHE_DIR=str(self.root / f"cache-{cache}"), CI="1")
        env.pop("CAS_STORE", None)
        return env

    def put(self, src: Path, name: str) -> Sample:
        # Named as CI names its runs, so each put's parent is the newest earlier one.
        self.puts += 1
        cmd = [*self.cas_cmd, "put", "--store", str(self.store), "--json"]
        cmd += ["--ref", f"bench/{self.puts}-{name}"]
        s = run([[*cmd, "--level", str(self.level), str(src)]], env=self.cas_env("put"))
        self.ids[name] = json.loads(s.stdout)["manifest"]
        return s

    def _get(self, name: str, dest: Path, cache: str, *extra: str) -> Sample:
        cmd = [*self.cas_cmd, "get", "--store", str(self.store), "--json", *extra]
        s = run([[*cmd, self.ids[name], str(dest)]], env=self.cas_env(cache))
        s.extra["fetched"] = json.loads(s.stdout).get("bytes_from_store", 0)
        return s

    def get(self, name: str, dest: Path, cache: str) -> Sample:
        return self._get(name, dest, cache, "--delete")

    no_reuse_reason = (
        "reads a store on the local disk directly (its chunk cache is for remote stores), "
        "so it has nothing to reuse"
    )

    def get_with_a(self, name: str, dest: Path, cache: str, a_dir: Path) -> Sample | None:
        return None

    def stored(self) -> int:
        return dir_bytes(self.store, skip=STORE_SKIP)
