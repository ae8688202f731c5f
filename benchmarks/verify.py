"""Is a restore byte-identical to its source? Types, contents, modes, symlink targets, mtimes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

STALE = "extra (stale): "


def listing(root: Path) -> dict[str, os.stat_result]:
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.lstat(p)
    return out


def same_content(a: str, b: str) -> bool:
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            x = fa.read(1 << 20)
            y = fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def tree_differences(expected: Path, actual: Path, *, mtimes: bool = True) -> list[str]:
    """Every way `actual` differs from `expected` (empty list: identical).

    Paths only in `actual` come first-class as `STALE` entries, so a caller
    can tell files a tool left behind from files it got wrong.
    """
    want, got = listing(expected), listing(actual)
    diffs = [f"missing: {p}" for p in sorted(want.keys() - got.keys())]
    diffs += [f"{STALE}{p}" for p in sorted(got.keys() - want.keys())]
    for rel in sorted(want.keys() & got.keys()):
        a, b = want[rel], got[rel]
        if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
            diffs.append(f"type differs: {rel}")
            continue
        if stat.S_ISLNK(a.st_mode):
            if os.readlink(expected / rel) != os.readlink(actual / rel):
                diffs.append(f"symlink target differs: {rel}")
        elif stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode):
            diffs.append(
                f"mode {oct(stat.S_IMODE(b.st_mode))} != {oct(stat.S_IMODE(a.st_mode))}: {rel}"
            )
        if stat.S_ISREG(a.st_mode) and (
            a.st_size != b.st_size or not same_content(str(expected / rel), str(actual / rel))
        ):
            diffs.append(f"content differs: {rel}")
        if mtimes and a.st_mtime_ns != b.st_mtime_ns:
            diffs.append(f"mtime {b.st_mtime_ns} != {a.st_mtime_ns}: {rel}")
    return diffs


def split_stale(diffs: list[str]) -> tuple[list[str], list[str]]:
    """(paths left behind that the source lacks, every other difference)."""
    stale = [d for d in diffs if d.startswith(STALE)]
    return stale, [d for d in diffs if not d.startswith(STALE)]
