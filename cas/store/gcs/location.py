"""`gs://BUCKET/PREFIX` URLs and the object names a `GcsStore` uses under them.

Layout inside the bucket (``P`` is the prefix, possibly empty)::

    P/cas-store.json       {"layout": "cas.gcs-store/2"}, written with the first write
    P/<kind>/<64 hex>      one object per stored object, for every `Kind`
                           (pack, index, manifest, gc)
    P/refs/<ref name>      one object per ref, holding the target id

No sharding directories: GCS names are flat and BLAKE3 names already spread
load evenly across the key space.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from cas.errors import UsageError
from cas.ids import ObjectId
from cas.store.base import Kind, check_id, validate_ref_name

# https://cloud.google.com/storage/docs/buckets#naming (dotted names may reach 222).
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_PREFIX_SEGMENT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@=-]*")
DEFAULT_ENDPOINT: Final = "https://storage.googleapis.com"
MARKER: Final = "cas-store.json"


@dataclass(frozen=True)
class GcsLocation:
    """A bucket and a prefix inside it; everything the store reads or writes is under it."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> GcsLocation:
        """Parse `gs://BUCKET[/PREFIX]`, refusing anything that could name a surprising place."""
        parts = urlsplit(url)
        if parts.scheme != "gs":
            raise UsageError(f"not a gs:// URL: {url!r}")
        if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
            raise UsageError(f"gs:// URL takes only a bucket and a prefix: {url!r}")
        bucket = parts.netloc
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise UsageError(
                f"invalid bucket name {bucket!r} in {url!r}: 3-63 lower-case letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit"
            )
        prefix = parts.path.strip("/")
        if prefix:
            for segment in prefix.split("/"):
                if not _PREFIX_SEGMENT.fullmatch(segment):
                    raise UsageError(
                        f"invalid prefix {prefix!r} in {url!r}: segments are [A-Za-z0-9._+@=-], "
                        "non-empty, not starting with '.' or '-'"
                    )
        return cls(bucket, prefix)

    @property
    def url(self) -> str:
        """The canonical `gs://` URL, as shown in messages."""
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    @property
    def base(self) -> str:
        """The object-name prefix every name of this store starts with."""
        return f"{self.prefix}/" if self.prefix else ""

    def kind_prefix(self, kind: Kind) -> str:
        """Where objects of one kind live."""
        return f"{self.base}{Kind(kind).value}/"

    def object_name(self, kind: Kind, object_id: ObjectId) -> str:
        """The bucket object holding one stored object (the id is checked first)."""
        return self.kind_prefix(kind) + bytes.hex(check_id(object_id))

    @property
    def marker_name(self) -> str:
        """The object that says which layout the store under this prefix has."""
        return f"{self.base}{MARKER}"

    @property
    def refs_prefix(self) -> str:
        """Where refs live."""
        return f"{self.base}refs/"

    def ref_name(self, name: str) -> str:
        """The bucket object holding one ref (the name is checked first)."""
        return self.refs_prefix + validate_ref_name(name)


def emulator_endpoint() -> str | None:
    """`STORAGE_EMULATOR_HOST` as a base URL (`host:port` means plain http), or None."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not host:
        return None
    if "://" not in host:
        host = f"http://{host}"
    return host.rstrip("/")
