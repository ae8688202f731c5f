"""OS errors on a local store as `cas.errors`, naming the store and what was attempted."""

from __future__ import annotations

import errno
from pathlib import Path

from cas.errors import (
    CasError,
    ObjectName,
    ObjectNotFound,
    PermissionDenied,
    StoreUnavailable,
    UsageError,
)


def translate_error(
    exc: OSError, what: str, root: Path | None = None, name: ObjectName | None = None
) -> CasError:
    """Map an OS error on the store onto `cas.errors`, naming the store and what was attempted.

    `name` is the object the call was on, if one: a missing file names it.
    """
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFound.of(f"{what} not found", name)
    where = f"the store at {root}" if root is not None else "the store"
    if isinstance(exc, PermissionError):
        path = f" ({exc.filename})" if exc.filename else ""
        return PermissionDenied(f"permission denied on {where}: {what}{path}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreUnavailable(f"{where} is full: {what}")
    if exc.errno == errno.EROFS:
        return PermissionDenied(f"{where} is on a read-only file system: {what}")
    if exc.errno == errno.ENAMETOOLONG:
        # A valid ref name may hold a segment longer than a file name may be
        # here: no such ref can exist, and retrying cannot help.
        return UsageError(f"{what}: a name in it is too long for the file system of {where}")
    return StoreUnavailable(f"{what} in {where}: {exc.strerror or exc}")
