"""The directory of a local store: its marker, its namespaces, and opening it.

`cas-store.json` names the layout; a store is created by making the
namespace directories and then linking the marker into place, so a
directory holding a marker is a whole store. A process killed while it
created the store leaves the skeleton without the marker; the next open
finishes the job.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Final

from cas.errors import ObjectNotFound, UsageError
from cas.store.base import Kind
from cas.store.localerrors import translate_error

LAYOUT: Final = "cas.local-store/2"
FORMAT_1_LAYOUT: Final = "cas.local-store/1"
MARKER: Final = "cas-store.json"
_STALE_TMP_SECONDS: Final = 24 * 3600
_SKELETON: Final = frozenset([*(kind.value for kind in Kind), "refs", "tmp"])


def _unfinished_skeleton(root: Path) -> bool:
    """Whether `root` holds nothing but what creating a store makes before its marker.

    A process killed while it created the store leaves empty namespace
    directories (and maybe its marker's temp file) without the marker; the
    next one finishes the job instead of refusing the directory as foreign.
    """
    for entry in root.iterdir():
        if entry.name not in _SKELETON or not entry.is_dir() or entry.is_symlink():
            return False
        allowed = "marker." if entry.name == "tmp" else None
        if any(allowed is None or not p.name.startswith(allowed) for p in entry.iterdir()):
            return False
    return True


def _check_layout(root: Path, info: object) -> None:
    """Accept only this layout; name a format 1 store as such, in one line."""
    layout = info.get("layout") if isinstance(info, dict) else None
    if layout == LAYOUT:
        return
    if layout == FORMAT_1_LAYOUT:
        raise UsageError(
            f"{root} is a format 1 store ({FORMAT_1_LAYOUT}); this cas reads and writes "
            "format 2 only: put into a new store"
        )
    raise UsageError(f"{root}: unsupported store layout {layout!r} (this cas reads {LAYOUT})")


def open_layout(root: Path, create: bool) -> bool:
    """Open the store directory `root`, creating it if asked; True if this call created it."""
    created = False
    marker = root / MARKER
    if root.exists() and not root.is_dir():
        raise UsageError(f"store path {root} exists and is not a directory")
    try:
        if marker.exists():
            _check_layout(root, json.loads(marker.read_text()))
        elif not create:
            raise ObjectNotFound(f"no cas store at {root}")
        else:
            root.mkdir(parents=True, exist_ok=True)
            if not _unfinished_skeleton(root):
                raise UsageError(
                    f"{root} is not empty and not a cas store; refusing to write into it"
                )
            for kind in Kind:
                (root / kind.value).mkdir(exist_ok=True)
            (root / "refs").mkdir(exist_ok=True)
            (root / "tmp").mkdir(exist_ok=True)
            tmp = root / "tmp" / f"marker.{secrets.token_hex(8)}"
            tmp.write_text(json.dumps({"layout": LAYOUT}) + "\n")
            try:
                os.link(tmp, marker)
                created = True
            except FileExistsError:
                pass  # another process initialised it at the same moment
            finally:
                tmp.unlink()
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deeply
        raise UsageError(f"{marker} is not valid JSON") from None
    except OSError as exc:
        raise translate_error(exc, f"store {root}") from None
    remove_stale_temporaries(root)
    return created


def remove_stale_temporaries(root: Path) -> None:
    """Temp files of writers killed long ago: never visible, only clutter."""
    cutoff = time.time() - _STALE_TMP_SECONDS
    try:
        with os.scandir(root / "tmp") as it:
            for entry in it:
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                except OSError:
                    pass
    except OSError:
        pass
