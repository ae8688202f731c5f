"""What a `get` destination already holds, compared with what the manifest wants.

Read-only: `survey` lists the destination (lstat only, real directories
only, never through a symlink, pruned by the selection) and `Layout` sorts
every path into one of:

- a manifest file whose destination path holds a regular file of the same
  size: a candidate for "identical, leave untouched" (decided by chunk ids);
- something in the way of a manifest entry (a file where a directory goes,
  a directory where a file or symlink goes): replaced;
- extra: in the destination, selected, but not in the manifest; removed
  only with `--delete` and reported either way.

Every regular file met is a possible chunk source; `doomed` ones are those
the get replaces or removes, which must be pinned before their bytes go.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from cas.get.browse import Located
from cas.get.fswrite import TEMP_PREFIX
from cas.get.selection import Selection
from cas.objects import DirEntry, FileEntry


def survey(root: str, selection: Selection) -> dict[str, os.stat_result]:
    """Relative path -> lstat of everything under `root` that the selection may touch."""
    found: dict[str, os.stat_result] = {}
    stack: list[tuple[str, ...]] = [()]
    while stack:
        parts = stack.pop()
        directory = os.path.join(root, *parts)
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue
        for dirent in entries:
            if dirent.name.startswith(TEMP_PREFIX):
                continue
            try:
                st = dirent.stat(follow_symlinks=False)
            except OSError:
                continue
            child = (*parts, dirent.name)
            found["/".join(child)] = st
            if stat.S_ISDIR(st.st_mode) and selection.enters(child):
                stack.append(child)
    return found


@dataclass
class Layout:
    """The manifest's selected entries set against the destination's current contents."""

    existing: dict[str, os.stat_result]
    candidates: dict[str, Located] = field(default_factory=dict)
    """Manifest files over a regular file of the same size."""
    dirs_over_files: set[str] = field(default_factory=set)
    """Manifest directories where the destination has something else, set aside first."""
    extras: list[str] = field(default_factory=list)
    """Top-most selected destination paths the manifest lacks."""
    doomed: set[str] = field(default_factory=set)
    """Regular destination files this get replaces (or removes, with --delete)."""

    @classmethod
    def build(
        cls,
        existing: dict[str, os.stat_result],
        entries: list[Located],
        selection: Selection,
        delete: bool,
    ) -> Layout:
        """Classify; `entries` are the selected manifest entries (dirs, files, symlinks)."""
        layout = cls(existing)
        wanted: dict[str, Located] = {located.path: located for located in entries}
        replaced_dirs: list[str] = []  # destination directories a file or symlink replaces
        for rel, located in wanted.items():
            st = existing.get(rel)
            if st is None:
                continue
            entry = located.entry
            if isinstance(entry, DirEntry):
                # A symlink where a directory goes is replaced only with --delete: without
                # it, get refuses (the link is never followed either way).
                link = stat.S_ISLNK(st.st_mode)
                if not stat.S_ISDIR(st.st_mode) and (delete or not link):
                    layout.dirs_over_files.add(rel)
                    if stat.S_ISREG(st.st_mode):
                        layout.doomed.add(rel)
                continue
            if stat.S_ISDIR(st.st_mode):
                replaced_dirs.append(rel)
            elif stat.S_ISREG(st.st_mode):
                if isinstance(entry, FileEntry) and st.st_size == entry.size:
                    layout.candidates[rel] = located
                else:
                    layout.doomed.add(rel)
        gone = set(replaced_dirs)
        extra_dirs: set[str] = set()
        for rel in sorted(existing):
            if rel in wanted:
                continue
            st = existing[rel]
            if _under(rel, gone):
                if stat.S_ISREG(st.st_mode):
                    layout.doomed.add(rel)
                continue
            if _under(rel, extra_dirs):
                if delete and stat.S_ISREG(st.st_mode):
                    layout.doomed.add(rel)
                continue
            if not selection.selects(rel, stat.S_ISDIR(st.st_mode)):
                continue
            layout.extras.append(rel)
            if stat.S_ISDIR(st.st_mode):
                extra_dirs.add(rel)
            elif delete and stat.S_ISREG(st.st_mode):
                layout.doomed.add(rel)
        return layout

    def replaced(self, rel: str) -> bool:
        """True if the regular file now at `rel` is doomed."""
        return rel in self.doomed

    def extra_files(self) -> tuple[int, int]:
        """Regular files, and their bytes, at or under the extra paths."""
        extras = set(self.extras)
        files = size = 0
        for rel, st in self.existing.items():
            if stat.S_ISREG(st.st_mode) and (rel in extras or _under(rel, extras)):
                files += 1
                size += st.st_size
        return files, size


def _under(rel: str, dirs: set[str]) -> bool:
    """True if a proper ancestor of `rel` is in `dirs`."""
    if not dirs:
        return False
    index = rel.find("/")
    while index >= 0:
        if rel[:index] in dirs:
            return True
        index = rel.find("/", index + 1)
    return False
