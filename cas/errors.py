"""Typed errors: the only exceptions the library raises on purpose.

Each class carries the process exit code that the command line maps it to, so
scripts can tell a missing object from a corrupt one without parsing text.
Backends convert provider errors into these once, at their edge.
"""

from __future__ import annotations

from typing import NamedTuple


class CasError(Exception):
    """Something went wrong in cas."""

    exit_code = 1


class UsageError(CasError):
    """A bad option, URL, id or path given by the user."""

    exit_code = 2


class ObjectName(NamedTuple):
    """The stored object a store call is about, handed to the `ObjectNotFound` it may raise."""

    kind: str
    object_id: str


class ObjectNotFound(CasError, FileNotFoundError):
    """An object, ref or path that was asked for does not exist.

    `kind` and `object_id` name the stored object when it was one (a pack,
    an index...), so callers can act on which object is gone without
    parsing the message.
    """

    exit_code = 3

    def __init__(self, message: str, *, kind: str | None = None, object_id: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.object_id = object_id

    @classmethod
    def of(cls, message: str, name: ObjectName | None) -> ObjectNotFound:
        """The error for a store call, naming its object when the call was on one."""
        if name is None:
            return cls(message)
        return cls(message, kind=name.kind, object_id=name.object_id)


class IntegrityError(CasError):
    """Data read back does not hash to the id it was stored under.

    Never silently accepted: the message names the object so that it can be
    found and repaired.
    """

    exit_code = 4

    def __init__(self, kind: str, object_id: str, detail: str) -> None:
        self.kind = kind
        self.object_id = object_id
        self.detail = detail
        super().__init__(f"{kind} {object_id} is corrupt: {detail}")


class UnsafeManifest(CasError):
    """A manifest or tree that would make `get` write outside its destination."""

    exit_code = 5


class AlreadyExists(CasError, FileExistsError):
    """A create-only name (a ref) is taken; it is never overwritten."""

    exit_code = 6


class StoreUnavailable(CasError):
    """A transient store failure; the only kind worth retrying."""

    exit_code = 7


class PermissionDenied(CasError, PermissionError):
    """The store or filesystem refused an operation for lack of rights."""

    exit_code = 8


class SourceError(CasError):
    """A file or directory being put could not be read."""

    exit_code = 9


class DestinationError(CasError):
    """The destination of a `get` could not be written (full, read-only, in the way)."""

    exit_code = 10


class FormatError(CasError):
    """An object is well-hashed but not a valid tree or manifest."""

    exit_code = 11


class IncompletePut(CasError):
    """`put --skip-unreadable` stored the manifest but left unreadable files out."""

    exit_code = 12


class ConcurrentGcError(CasError):
    """Collections kept deleting what a put needed; the put could not settle."""

    exit_code = 13


class LeaseLost(CasError):
    """A collection could not renew its lease in time and stopped deleting."""

    exit_code = 14


UNREADABLE: tuple[type[CasError], ...] = (ObjectNotFound, IntegrityError, FormatError)
"""The failures of a read that say the object is gone or damaged."""


def read_failure(exc: CasError) -> str:
    """How reports name an object a read failed on: "missing: ..." or "corrupt: ..."."""
    return f"{'missing' if isinstance(exc, ObjectNotFound) else 'corrupt'}: {exc}"


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        CasError,
        UsageError,
        ObjectNotFound,
        IntegrityError,
        UnsafeManifest,
        AlreadyExists,
        StoreUnavailable,
        PermissionDenied,
        SourceError,
        DestinationError,
        FormatError,
        IncompletePut,
        ConcurrentGcError,
        LeaseLost,
    )
}
