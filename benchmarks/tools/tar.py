"""tar with zstd: one archive per put, extracted whole on every get (the baseline)."""

from __future__ import annotations

from pathlib import Path

from measure import Sample, run

from tools.base import Tool, version_line


class Tar3(Tool):
    key = "tar3"
    label = "tar+zstd -3"
    commands = ("tar", "zstd")
    zstd_level = 3

    @classmethod
    def version(cls) -> str:
        tar = version_line(["tar", "--version"])
        return f"{tar}; {version_line(['zstd', '--version']).strip('* ').split(',')[0]}"

    def archive(self, name: str) -> Path:
        return self.root / f"{name}.tar.zst"

    def put(self, src: Path, name: str) -> Sample:
        out = self.archive(name)
        compress = f"zstd -T0 -{self.zstd_level}"
        s = run([["tar", "-I", compress, "-cf", str(out), "-C", str(src), "."]])
        s.extra["archive"] = out.stat().st_size
        return s

    def get(self, name: str, dest: Path, cache: str) -> Sample:
        dest.mkdir(parents=True, exist_ok=True)
        archive = self.archive(name)
        s = run([["tar", "-I", "zstd -T0", "-xf", str(archive), "-C", str(dest)]])
        s.extra["fetched"] = archive.stat().st_size
        return s

    def stored(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.tar.zst"))


class Tar10(Tar3):
    key = "tar10"
    label = "tar+zstd -10"
    zstd_level = 10
