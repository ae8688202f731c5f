"""The known-present cache: objects a remote store was recently seen to hold.

On a cloud store every "is this chunk there?" is a request, and a re-put of
a mostly unchanged tree is mostly such questions. This cache remembers, per
store, the chunks and trees the store answered for or accepted, so later
puts from this machine skip asking. Trusting an old answer is only safe
while nothing could have deleted the object since, so an answer is used
only while all of these hold:

1. **No collection ran since.** Entries are tied to the set of garbage
   collection runs visible in the store's `gc` namespace when they were
   recorded (`runs_fingerprint`). Any new run, finished or not, drops every
   entry of that store; while a run is in progress nothing is used or
   recorded. A run that starts during the put is caught by the put's gc
   fence, which re-checks the finished manifest against the store itself.
2. **It is recent.** Entries expire after `TTL_SECONDS` (an hour), which
   bounds the damage of deletions no collection record announces: a store
   wiped and recreated, objects removed by hand or by a lifecycle rule
   (docs/gcs.md says never to age out chunks and trees).
3. **A sample still checks out.** Each id it would skip is still asked of
   the store with probability `SAMPLE` (and at least one per put); if any is
   gone, every entry of that store is dropped and everything is asked.

Only used for remote stores: asking a local directory is as cheap as
asking this cache.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import blake3
import lmdb

from cas.filescache import FilesCache
from cas.ids import ObjectId
from cas.lmdbenv import put_all
from cas.store.base import Kind

TTL_SECONDS: Final = 3600
SAMPLE: Final = 0.01
"""Share of the ids answered from the cache that are asked of the store anyway."""
_KINDS: Final = {Kind.CHUNK: b"c", Kind.TREE: b"t"}
_STAMP = struct.Struct(">Q")

Missing = Callable[[Kind, list[ObjectId]], Awaitable[set[ObjectId]]]


class KnownPresent:
    """Per-store memory of present chunks and trees, in the files cache's environment."""

    def __init__(self, files: FilesCache, store_url: str, ttl_s: int = TTL_SECONDS) -> None:
        self._env = files.env
        self._db = files.table(b"present")
        self._meta = files.table(b"meta")
        self._prefix = blake3.blake3(b"present\0" + store_url.encode()).digest()[:8]
        self._epoch_key = b"present_runs:" + self._prefix
        self._ttl_s = ttl_s
        self._now = int(time.time())
        self._active = False
        self._pending: dict[bytes, None] = {}
        self._sampled = False
        self.asked = 0
        """Ids asked of the store through `missing`."""
        self.skipped = 0
        """Ids answered from the cache."""

    def begin(self, runs_fingerprint: bytes | None) -> None:
        """Start a put: `runs_fingerprint` names the visible gc runs (None: one is running)."""
        if runs_fingerprint is None:
            self._active = False
            return
        try:
            with self._env.begin(write=True) as txn:
                if txn.get(self._epoch_key, db=self._meta) != runs_fingerprint:
                    self._drop(txn)
                    txn.put(self._epoch_key, runs_fingerprint, db=self._meta)
        except lmdb.Error:
            self._active = False
            return
        self._active = True

    async def missing(self, ask: Missing, kind: Kind, ids: Sequence[ObjectId]) -> set[ObjectId]:
        """What `ask` (the store's `missing`) would answer, asking it as little as is safe."""
        if not self._active or kind not in _KINDS or not ids:
            self.asked += len(ids)
            absent = await ask(kind, list(ids))
            self.note_present(kind, (i for i in ids if i not in absent))
            return absent
        known, unknown = self._split(kind, ids)
        sample = [i for i in known if random.random() < SAMPLE]
        if known and not sample and not self._sampled:  # at least one per put
            sample = [random.choice(known)]
        self._sampled = self._sampled or bool(sample)
        absent = await ask(kind, unknown + sample)
        self.asked += len(unknown) + len(sample)
        if any(i in absent for i in sample):  # the store lost what we remembered: trust nothing
            self.forget_all()
            asked = set(sample)
            rest = [i for i in known if i not in asked]
            absent |= await ask(kind, rest)
            self.asked += len(rest)
        else:
            self.skipped += len(known) - len(sample)
        self.note_present(kind, (i for i in ids if i not in absent))
        return absent

    def note_present(self, kind: Kind, ids: Iterable[ObjectId]) -> None:
        """The store holds these now (it said so, or just accepted them)."""
        if self._active and kind in _KINDS:
            for object_id in ids:
                self._pending[self._key(kind, object_id)] = None

    def flush(self) -> None:
        """Write what was noted; one transaction."""
        pending, self._pending = self._pending, {}
        if not pending or not self._active:
            return
        stamp = _STAMP.pack(self._now)
        if not put_all(self._env, self._db, ((key, stamp) for key in pending)):
            self.forget_all()

    def forget_all(self) -> None:
        """Drop every entry of this store."""
        self._pending.clear()
        try:
            with self._env.begin(write=True) as txn:
                self._drop(txn)
        except lmdb.Error:
            self._active = False

    def _split(self, kind: Kind, ids: Sequence[ObjectId]) -> tuple[list[ObjectId], list[ObjectId]]:
        known: list[ObjectId] = []
        unknown: list[ObjectId] = []
        oldest = self._now - self._ttl_s
        try:
            with self._env.begin(buffers=False) as txn:
                for object_id in ids:
                    raw = txn.get(self._key(kind, object_id), db=self._db)
                    fresh = raw is not None and len(raw) == _STAMP.size
                    if fresh and oldest <= _STAMP.unpack(raw)[0] <= self._now + 60:
                        known.append(object_id)
                    else:
                        unknown.append(object_id)
        except lmdb.Error:
            return [], list(ids)
        return known, unknown

    def _key(self, kind: Kind, object_id: ObjectId) -> bytes:
        return self._prefix + _KINDS[kind] + bytes(object_id)

    def _drop(self, txn: lmdb.Transaction) -> None:
        with txn.cursor(db=self._db) as cursor:
            if not cursor.set_range(self._prefix):
                return
            while cursor.key()[: len(self._prefix)] == self._prefix:
                if not cursor.delete():
                    break


def runs_fingerprint(runs: dict[str, bool]) -> bytes | None:
    """A digest of the visible collection runs (run id -> finished), or None if one is running."""
    if not all(runs.values()):
        return None
    return blake3.blake3("\n".join(sorted(runs)).encode()).digest()
