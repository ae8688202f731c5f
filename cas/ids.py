"""Object ids: the BLAKE3-256 digest of an object's uncompressed bytes.

Names in a store are these digests, so they cannot be predicted before the
content exists nor poisoned: anything read back is checked against its name.
"""

from __future__ import annotations

import re
from typing import Final

import blake3

from cas.errors import IntegrityError, UsageError

ID_BYTES: Final = 32
_HEX_RE: Final = re.compile(r"[0-9a-f]{64}")
_HEX_DIGITS: Final = frozenset("0123456789abcdef")

# Below this size BLAKE3's own threads cost more than they save.
_MULTITHREAD_MIN = 8 << 20


class ObjectId(bytes):
    """A 32-byte BLAKE3 digest; `str()` gives the canonical lower-case hex."""

    __slots__ = ()

    def __new__(cls, raw: bytes) -> ObjectId:
        """Wrap 32 raw digest bytes."""
        if len(raw) != ID_BYTES:
            raise UsageError(f"an object id is {ID_BYTES} bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def parse(cls, text: str) -> ObjectId:
        """Parse strict lower-case hex; anything else is a usage error before any I/O."""
        if not isinstance(text, str) or not _HEX_RE.fullmatch(text):
            shown = text if isinstance(text, str) and len(text) <= 80 else repr(text)[:80]
            raise UsageError(f"not an object id (64 lower-case hex characters): {shown!r}")
        return cls(bytes.fromhex(text))

    @property
    def hex(self) -> str:  # type: ignore[override]
        """The canonical text form."""
        return bytes.hex(self)

    def __str__(self) -> str:
        return bytes.hex(self)

    def __repr__(self) -> str:
        return f"ObjectId({bytes.hex(self)[:16]}…)"


def is_object_id(text: str) -> bool:
    """True when `text` is a well-formed id (used to tell ids from ref names)."""
    return isinstance(text, str) and _HEX_RE.fullmatch(text) is not None


def is_id_prefix(text: str) -> bool:
    """True when `text` is lower-case hex (empty included): only such prefixes can start an id."""
    return all(c in _HEX_DIGITS for c in text)


def check_list_prefix(prefix: str) -> str:
    """`prefix` unchanged, or a usage error before any I/O: every store lists by id prefix."""
    if not is_id_prefix(prefix):
        raise UsageError(f"list prefix must be lower-case hex: {prefix!r}")
    return prefix


def hash_bytes(data: bytes | bytearray | memoryview) -> ObjectId:
    """Digest `data`; large inputs use BLAKE3's own threads (it releases the GIL)."""
    if len(data) >= _MULTITHREAD_MIN:
        hasher = blake3.blake3(data, max_threads=blake3.blake3.AUTO)
    else:
        hasher = blake3.blake3(data)
    return ObjectId(hasher.digest())


def new_hasher() -> blake3.blake3:
    """An incremental hasher, for whole-file digests built chunk by chunk."""
    return blake3.blake3()


def verify(kind: str, expected: ObjectId, data: bytes | memoryview) -> None:
    """Raise `IntegrityError` naming the object unless `data` hashes to `expected`."""
    got = hash_bytes(data)
    if got != expected:
        raise IntegrityError(kind, str(expected), f"content hashes to {got}")
