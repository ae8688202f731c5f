"""The object model: trees (one per directory) and manifests, and their bytes.

Serialisation is canonical JSON (sorted keys, no spaces, UTF-8, integers
only), so the same directory always gives the same bytes and therefore the
same id on any machine. Parsing is strict: unknown formats and fields, wrong
types, unsorted or duplicate entries and unsafe names are all refused with a
`FormatError` or `UnsafeManifest` that names the field. docs/format.md is the
specification; this module is its reference implementation.

Names are kept as `str` decoded with `os.fsdecode` (surrogateescape), so a
file name that is not valid UTF-8 survives the round trip: it is written as
base64 of its raw bytes under `name_b64` instead of `name`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from cas.chunking import ChunkParams
from cas.errors import FormatError, UnsafeManifest, UsageError
from cas.ids import ObjectId, hash_bytes, is_object_id

TREE_FORMAT: Final = "cas.tree/1"
MANIFEST_FORMAT: Final = "cas.manifest/1"

MAX_NAME_BYTES: Final = 255
MAX_LINK_TARGET_BYTES: Final = 4095
MAX_TREE_BYTES: Final = 64 << 20
MAX_MANIFEST_BYTES: Final = 1 << 20
MAX_LABELS: Final = 64

_MODE_MASK: Final = 0o7777
_INT64: Final = 1 << 63


# ---------------------------------------------------------------- names


def encode_name(name: str) -> bytes:
    """File-system bytes of a name, as the OS gave them."""
    return os.fsencode(name)


def check_name(name: str, where: str = "entry") -> None:
    """Refuse any name that could address something outside its directory."""
    if not isinstance(name, str):
        raise UnsafeManifest(f"{where}: name is not a string")
    raw = encode_name(name)
    if raw in (b"", b".", b".."):
        raise UnsafeManifest(f"{where}: name {name!r} is not allowed")
    if b"/" in raw or b"\0" in raw:
        raise UnsafeManifest(f"{where}: name {name!r} contains '/' or NUL")
    if len(raw) > MAX_NAME_BYTES:
        raise UnsafeManifest(f"{where}: name longer than {MAX_NAME_BYTES} bytes")


def _put_text(out: dict[str, Any], key: str, value: str) -> None:
    """Store `value` as UTF-8 text under `key`, or as base64 raw bytes under `key_b64`."""
    raw = os.fsencode(value)
    try:
        out[key] = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        out[key + "_b64"] = base64.b64encode(raw).decode("ascii")


def _get_text(obj: Mapping[str, Any], key: str, where: str) -> str:
    has_text, has_b64 = key in obj, key + "_b64" in obj
    if has_text == has_b64:
        raise FormatError(f"{where}: exactly one of '{key}' and '{key}_b64' is required")
    if has_text:
        value = obj[key]
        if not isinstance(value, str):
            raise FormatError(f"{where}: '{key}' must be a string")
        return os.fsdecode(value.encode("utf-8", errors="surrogatepass"))
    value = obj[key + "_b64"]
    if not isinstance(value, str):
        raise FormatError(f"{where}: '{key}_b64' must be a string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{where}: '{key}_b64' is not base64") from None
    return os.fsdecode(raw)


# ---------------------------------------------------------------- entries


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its id and its uncompressed length."""

    id: ObjectId
    length: int


@dataclass(frozen=True)
class FileEntry:
    """A regular file: its chunks in order, or its bytes inline when tiny."""

    name: str
    mode: int
    size: int
    mtime_ns: int | None
    digest: ObjectId
    chunks: tuple[ChunkRef, ...] = ()
    inline: bytes | None = None

    kind: ClassVar[str] = "file"


@dataclass(frozen=True)
class DirEntry:
    """A subdirectory, by the id of its own tree."""

    name: str
    mode: int
    mtime_ns: int | None
    tree: ObjectId

    kind: ClassVar[str] = "dir"


@dataclass(frozen=True)
class SymlinkEntry:
    """A symbolic link, stored as its target text and never followed."""

    name: str
    target: str
    mtime_ns: int | None

    kind: ClassVar[str] = "symlink"


Entry = FileEntry | DirEntry | SymlinkEntry


def _sort_key(entry: Entry) -> bytes:
    return encode_name(entry.name)


@dataclass(frozen=True)
class Tree:
    """One directory's entries, sorted by the raw bytes of their names."""

    entries: tuple[Entry, ...]

    @classmethod
    def build(cls, entries: Iterable[Entry]) -> Tree:
        """Sort and check entries; duplicate names are a bug in the caller."""
        ordered = tuple(sorted(entries, key=_sort_key))
        for before, after in itertools.pairwise(ordered):
            if before.name == after.name:
                raise UsageError(f"duplicate entry name {after.name!r}")
        return cls(ordered)

    def to_bytes(self) -> bytes:
        """Canonical bytes; their BLAKE3 is the tree id."""
        return _canonical({"format": TREE_FORMAT, "entries": [_entry_obj(e) for e in self.entries]})

    def id(self) -> ObjectId:
        """The id this tree is stored under."""
        return hash_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "tree") -> Tree:
        """Strictly parse a tree; names are validated here, before anything is written."""
        obj = _load(data, where)
        _exact_keys(obj, {"format", "entries"}, set(), where)
        if obj["format"] != TREE_FORMAT:
            raise FormatError(f"{where}: unknown format {obj['format']!r}")
        raw_entries = obj["entries"]
        if not isinstance(raw_entries, list):
            raise FormatError(f"{where}: 'entries' must be a list")
        entries: list[Entry] = []
        previous: bytes | None = None
        for index, raw in enumerate(raw_entries):
            entry = _common_entry(raw)
            if entry is None:
                entry = _parse_entry(raw, f"{where} entry {index}")
            key = _sort_key(entry)
            if previous is not None and key <= previous:
                raise UnsafeManifest(f"{where}: entry {entry.name!r} is duplicated or out of order")
            previous = key
            entries.append(entry)
        return cls(tuple(entries))


def _entry_obj(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": entry.kind}
    _put_text(out, "name", entry.name)
    if entry.mtime_ns is not None:
        out["mtime_ns"] = entry.mtime_ns
    if isinstance(entry, FileEntry):
        out["mode"] = entry.mode
        out["size"] = entry.size
        out["digest"] = str(entry.digest)
        if entry.inline is not None:
            out["data"] = base64.b64encode(entry.inline).decode("ascii")
        else:
            out["chunks"] = [[str(c.id), c.length] for c in entry.chunks]
    elif isinstance(entry, DirEntry):
        out["mode"] = entry.mode
        out["tree"] = str(entry.tree)
    else:
        _put_text(out, "target", entry.target)
    return out


_RESERVED_NAMES: Final = frozenset({"", ".", ".."})


def _common_entry(raw: Any) -> Entry | None:
    """The usual entry, parsed without `_parse_entry`'s per-field bookkeeping.

    Trees are parsed on every get, mount and listing, and nearly all their
    entries have an ASCII name and no surprises; this takes those at a
    third of the cost. It accepts only what `_parse_entry` accepts, giving
    the same entry (a property test holds it to that); anything else,
    valid or not, returns None and goes through `_parse_entry`, which says
    precisely what is wrong.
    """
    if type(raw) is not dict:
        return None
    name = raw.get("name")
    if (
        type(name) is not str
        or not name.isascii()
        or len(name) > MAX_NAME_BYTES
        or name in _RESERVED_NAMES
        or "/" in name
        or "\0" in name
    ):
        return None
    fields = len(raw)
    mtime = None
    if "mtime_ns" in raw:
        fields -= 1
        mtime = raw["mtime_ns"]
        if type(mtime) is not int or not -_INT64 <= mtime < _INT64:
            return None
    kind = raw.get("kind")
    if kind == "file":
        mode, size = raw.get("mode"), raw.get("size")
        if type(mode) is not int or not 0 <= mode <= _MODE_MASK:
            return None
        if type(size) is not int or not 0 <= size < _INT64 or fields != 6:
            return None
        digest = _common_id(raw.get("digest"))
        if digest is None:
            return None
        if "data" in raw:
            data = raw["data"]
            if type(data) is not str:
                return None
            try:
                inline = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                return None
            if len(inline) != size:
                return None
            return FileEntry(name, mode, size, mtime, digest, (), inline)
        chunks = _common_chunks(raw.get("chunks"), size)
        return None if chunks is None else FileEntry(name, mode, size, mtime, digest, chunks, None)
    if kind == "dir":
        mode, tree = raw.get("mode"), _common_id(raw.get("tree"))
        if type(mode) is not int or not 0 <= mode <= _MODE_MASK or tree is None or fields != 4:
            return None
        return DirEntry(name, mode, mtime, tree)
    if kind == "symlink":
        target = raw.get("target")
        if (
            type(target) is not str
            or not target.isascii()
            or not 0 < len(target) <= MAX_LINK_TARGET_BYTES
            or "\0" in target
            or fields != 3
        ):
            return None
        return SymlinkEntry(name, target, mtime)
    return None


def _common_id(text: Any) -> ObjectId | None:
    if type(text) is not str or not is_object_id(text):
        return None
    return ObjectId(bytes.fromhex(text))


def _common_chunks(raw: Any, size: int) -> tuple[ChunkRef, ...] | None:
    """A chunk list of well-formed [id, length] pairs adding up to `size`, else None."""
    if type(raw) is not list:
        return None
    refs = []
    total = 0
    for item in raw:
        if type(item) is not list or len(item) != 2:
            return None
        chunk_id, length = _common_id(item[0]), item[1]
        if chunk_id is None or type(length) is not int or length <= 0:
            return None
        refs.append(ChunkRef(chunk_id, length))
        total += length
    return tuple(refs) if total == size else None


def _parse_entry(raw: Any, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise FormatError(f"{where}: must be an object")
    kind = raw.get("kind")
    name = _get_text(raw, "name", where)
    check_name(name, where)
    where = f"{where} ({name!r})"
    name_keys = {"name_b64" if "name_b64" in raw else "name"}
    mtime = _opt_int(raw, "mtime_ns", where, -_INT64, _INT64 - 1)
    if kind == "file":
        mode = _int(raw, "mode", where, 0, _MODE_MASK)
        size = _int(raw, "size", where, 0, _INT64 - 1)
        digest = _id(raw, "digest", where)
        if "data" in raw:
            _exact_keys(
                raw, {"kind", "mode", "size", "digest", "data"} | name_keys, {"mtime_ns"}, where
            )
            if not isinstance(raw["data"], str):
                raise FormatError(f"{where}: 'data' must be a base64 string")
            try:
                inline = base64.b64decode(raw["data"], validate=True)
            except (binascii.Error, ValueError):
                raise FormatError(f"{where}: 'data' is not base64") from None
            if len(inline) != size:
                raise FormatError(f"{where}: inline data is {len(inline)} bytes, size says {size}")
            return FileEntry(name, mode, size, mtime, digest, (), inline)
        _exact_keys(
            raw, {"kind", "mode", "size", "digest", "chunks"} | name_keys, {"mtime_ns"}, where
        )
        chunks = _parse_chunks(raw["chunks"], where)
        total = sum(c.length for c in chunks)
        if total != size:
            raise FormatError(f"{where}: chunk lengths add up to {total}, size says {size}")
        return FileEntry(name, mode, size, mtime, digest, chunks, None)
    if kind == "dir":
        _exact_keys(raw, {"kind", "mode", "tree"} | name_keys, {"mtime_ns"}, where)
        return DirEntry(
            name, _int(raw, "mode", where, 0, _MODE_MASK), mtime, _id(raw, "tree", where)
        )
    if kind == "symlink":
        target_keys = {"target_b64" if "target_b64" in raw else "target"}
        _exact_keys(raw, {"kind"} | name_keys | target_keys, {"mtime_ns"}, where)
        target = _get_text(raw, "target", where)
        raw_target = os.fsencode(target)
        if not raw_target or b"\0" in raw_target or len(raw_target) > MAX_LINK_TARGET_BYTES:
            raise UnsafeManifest(f"{where}: symlink target is empty, too long or contains NUL")
        return SymlinkEntry(name, target, mtime)
    raise FormatError(f"{where}: unknown kind {kind!r}")


def _parse_chunks(raw: Any, where: str) -> tuple[ChunkRef, ...]:
    if not isinstance(raw, list):
        raise FormatError(f"{where}: 'chunks' must be a list")
    out = []
    for index, item in enumerate(raw):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not is_object_id(item[0])
            or not _is_int(item[1])
            or item[1] <= 0
        ):
            raise FormatError(f"{where}: chunk {index} must be [id, positive length]")
        out.append(ChunkRef(ObjectId.parse(item[0]), item[1]))
    return tuple(out)


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Totals:
    """Counts over the whole tree, for summaries without reading every tree."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    chunks: int = 0

    def to_dict(self) -> dict[str, int]:
        """Manifest field `totals`."""
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "bytes": self.bytes,
            "chunks": self.chunks,
        }


@dataclass(frozen=True)
class Manifest:
    """The root of one put: which tree, cut how, with what context.

    `created` and `tool` are omitted in reproducible mode, so the same tree
    gives the same manifest id on any machine and at any time.
    """

    root: ObjectId
    chunker: ChunkParams
    totals: Totals
    excludes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    mtimes: bool = True
    created: str | None = None
    tool: str | None = None

    def to_bytes(self) -> bytes:
        """Canonical bytes; their BLAKE3 is the manifest id."""
        obj: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "root": str(self.root),
            "chunker": self.chunker.to_dict(),
            "totals": self.totals.to_dict(),
            "excludes": list(self.excludes),
            "labels": dict(self.labels),
            "mtimes": self.mtimes,
        }
        if self.created is not None:
            obj["created"] = self.created
        if self.tool is not None:
            obj["tool"] = self.tool
        return _canonical(obj)

    def id(self) -> ObjectId:
        """The id this manifest is stored under."""
        return hash_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "manifest") -> Manifest:
        """Strictly parse a manifest."""
        obj = _load(data, where)
        _exact_keys(
            obj,
            {"format", "root", "chunker", "totals", "excludes", "labels", "mtimes"},
            {"created", "tool"},
            where,
        )
        if obj["format"] != MANIFEST_FORMAT:
            raise FormatError(f"{where}: unknown format {obj['format']!r}")
        if not isinstance(obj["chunker"], dict):
            raise FormatError(f"{where}: 'chunker' must be an object")
        try:
            chunker = ChunkParams.from_dict(obj["chunker"])
        except UsageError as exc:
            raise FormatError(f"{where}: chunker: {exc}") from None
        totals_raw = obj["totals"]
        if not isinstance(totals_raw, dict):
            raise FormatError(f"{where}: 'totals' must be an object")
        _exact_keys(
            totals_raw, {"files", "dirs", "symlinks", "bytes", "chunks"}, set(), f"{where} totals"
        )
        totals = Totals(
            **{k: _int(totals_raw, k, f"{where} totals", 0, _INT64 - 1) for k in totals_raw}
        )
        excludes = obj["excludes"]
        if not isinstance(excludes, list) or not all(isinstance(x, str) for x in excludes):
            raise FormatError(f"{where}: 'excludes' must be a list of strings")
        labels = obj["labels"]
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise FormatError(f"{where}: 'labels' must map strings to strings")
        if not isinstance(obj["mtimes"], bool):
            raise FormatError(f"{where}: 'mtimes' must be true or false")
        for key in ("created", "tool"):
            if key in obj and not isinstance(obj[key], str):
                raise FormatError(f"{where}: '{key}' must be a string")
        return cls(
            root=_id(obj, "root", where),
            chunker=chunker,
            totals=totals,
            excludes=tuple(excludes),
            labels=dict(labels),
            mtimes=obj["mtimes"],
            created=obj.get("created"),
            tool=obj.get("tool"),
        )


def parse_label(text: str) -> tuple[str, str]:
    """Parse one `--label key=value`."""
    key, sep, value = text.partition("=")
    if not sep or not key or len(key) > 128 or len(value) > 1024:
        raise UsageError(f"a label is key=value with a non-empty key: {text!r}")
    return key, value


def now_rfc3339() -> str:
    """Creation time as written into manifests (UTC, second precision)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- helpers


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _load(data: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, oversized integers
        raise FormatError(f"{where}: not valid UTF-8 JSON ({exc})") from None
    except RecursionError:
        raise FormatError(f"{where}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: must be a JSON object")
    return obj


def _exact_keys(obj: Mapping[str, Any], required: set[str], optional: set[str], where: str) -> None:
    keys = set(obj)
    missing = required - keys
    if missing:
        raise FormatError(f"{where}: missing field {sorted(missing)[0]!r}")
    extra = keys - required - optional
    if extra:
        raise FormatError(f"{where}: unknown field {sorted(extra)[0]!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(obj: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise FormatError(f"{where}: '{key}' must be an integer in [{lo}, {hi}]")
    return value


def _opt_int(obj: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int | None:
    return _int(obj, key, where, lo, hi) if key in obj else None


def _id(obj: Mapping[str, Any], key: str, where: str) -> ObjectId:
    value = obj.get(key)
    if not isinstance(value, str) or not is_object_id(value):
        raise FormatError(f"{where}: '{key}' must be a 64-character lower-case hex id")
    return ObjectId.parse(value)
