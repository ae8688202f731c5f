"""Reading a source directory: deterministic listing and exclude filters.

Entries come out sorted by the raw bytes of their names, so two machines
listing the same tree see the same order. Excludes are gitignore patterns
(pathspec's `GitIgnoreSpec`): `*.o` anywhere, `/build` at the root only,
`third_party/llvm/lib/` a directory and everything under it, `!keep.o` to
re-include. An excluded directory is not descended into. Symlinks are
recorded, never followed; sockets, FIFOs and devices are skipped and
reported.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pathspec

from cas.errors import SourceError, UsageError


@dataclass(frozen=True)
class SourceEntry:
    """One directory entry to put, with the `lstat` taken when it was listed."""

    name: str
    path: str
    rel: str
    st: os.stat_result
    link_target: str | None = None

    @property
    def is_dir(self) -> bool:
        """A real directory (not a link to one)."""
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        """A regular file."""
        return stat.S_ISREG(self.st.st_mode)

    @property
    def is_symlink(self) -> bool:
        """A symbolic link, kept as a link."""
        return stat.S_ISLNK(self.st.st_mode)


class Excludes:
    """Compiled gitignore-style patterns, matched on paths relative to the source root."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = tuple(p for p in patterns if p.strip() and not p.lstrip().startswith("#"))
        try:
            self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"invalid exclude pattern: {exc}") from None

    @classmethod
    def from_options(cls, patterns: Iterable[str], files: Iterable[str]) -> Excludes:
        """`--exclude PATTERN` values plus the lines of every `--exclude-from FILE`."""
        collected = list(patterns)
        for file in files:
            try:
                collected.extend(Path(file).read_text().splitlines())
            except OSError as exc:
                raise UsageError(f"cannot read exclude file {file}: {exc.strerror}") from None
        return cls(collected)

    def excluded(self, rel: str, is_dir: bool) -> bool:
        """True if the entry at `rel` (POSIX, relative) is excluded."""
        if not self.patterns:
            return False
        return self._spec.match_file(rel + "/" if is_dir else rel)


def list_directory(
    path: str, rel: str, excludes: Excludes, skipped: list[tuple[str, str]]
) -> list[SourceEntry]:
    """The kept entries of one directory, sorted by raw name bytes.

    Unsupported file types are appended to `skipped` as (relative path, reason).
    """
    try:
        with os.scandir(path) as it:
            raw = list(it)
    except PermissionError:
        raise SourceError(f"cannot read directory {path}: permission denied") from None
    except NotADirectoryError:
        raise SourceError(f"not a directory: {path}") from None
    except FileNotFoundError:
        raise SourceError(f"no such directory: {path}") from None
    except OSError as exc:
        raise SourceError(f"cannot read directory {path}: {exc.strerror}") from None
    out = []
    for dirent in sorted(raw, key=lambda d: os.fsencode(d.name)):
        child_rel = f"{rel}/{dirent.name}" if rel else dirent.name
        try:
            st = dirent.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # deleted while we listed: it is simply not part of this put
        except OSError as exc:
            raise SourceError(f"cannot stat {dirent.path}: {exc.strerror}") from None
        mode = st.st_mode
        is_dir = stat.S_ISDIR(mode)
        if excludes.excluded(child_rel, is_dir):
            continue
        if not (is_dir or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            skipped.append((child_rel, _describe(mode)))
            continue
        target = None
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(dirent.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SourceError(f"cannot read symlink {dirent.path}: {exc.strerror}") from None
        out.append(SourceEntry(dirent.name, dirent.path, child_rel, st, target))
    return out


def _describe(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "unsupported file type"
