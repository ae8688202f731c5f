"""Refs of a local store: one file per name under `refs/`, holding a manifest id.

Created the way objects are (durable, then linked, never overwritten).
Names are `/`-separated, so a ref is a file in a directory tree: a name
that would pass through another ref's file, or that is a prefix of other
refs, is refused on create and absent on read.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

from cas.errors import ObjectNotFound, UsageError
from cas.ids import ObjectId, is_object_id
from cas.store.base import RefInfo, validate_ref_name
from cas.store.localwrite import ExclusiveWriter


def stat_mtime(st: os.stat_result) -> datetime:
    """A file's modification time, as the store reports times (UTC)."""
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)


class LocalRefs:
    """Blocking ref operations under `base`; the store runs them in its I/O threads."""

    def __init__(self, base: Path, files: ExclusiveWriter) -> None:
        self.base = base
        self.files = files

    def path(self, name: str) -> Path:
        """The file of a (valid) ref name."""
        return self.base / validate_ref_name(name)

    def create(self, name: str, target: ObjectId) -> bool:
        """Create the ref; False if it exists."""
        path = self.path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UsageError(f"ref {name!r} conflicts with an existing ref prefix") from None
        if path.is_dir():
            raise UsageError(f"ref {name!r} is a prefix of existing refs")
        return self.files.write_exclusive(str(path), (str(target) + "\n").encode())

    def read(self, name: str) -> str:
        """The text the ref holds."""
        path = self.path(name)
        if path.is_dir():
            raise ObjectNotFound(f"ref {name!r} not found")
        try:
            return path.read_text().strip()
        except NotADirectoryError:  # a shorter ref is a file where a directory would be
            raise ObjectNotFound(f"ref {name!r} not found") from None

    def list(self, prefix: str) -> list[RefInfo]:
        """Every ref whose name starts with `prefix`, in name order."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.base):
            dirnames.sort()
            for filename in sorted(filenames):
                full = Path(dirpath) / filename
                name = full.relative_to(self.base).as_posix()
                if not name.startswith(prefix):
                    continue
                try:
                    text = full.read_text().strip()
                    st = full.stat()
                except FileNotFoundError:
                    continue
                if is_object_id(text):
                    out.append(RefInfo(name, ObjectId.parse(text), stat_mtime(st)))
        return sorted(out, key=lambda r: r.name)

    def delete(self, name: str) -> None:
        """Unlink the ref file; absent is fine."""
        path = self.path(name)
        # Not a directory: a shorter ref is a file on the way; is a directory:
        # only longer refs exist under this name. Either way this ref is absent.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            os.unlink(path)
