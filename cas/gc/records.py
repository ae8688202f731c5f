"""Records of garbage-collection runs, kept in the store's `gc` namespace.

A run writes a *start* record before it lists anything, a *beat* record
every quarter of its lease while it runs, and a *done* record after its last
delete has returned. Records are ordinary create-only objects (zstd frame of
canonical JSON, named by the BLAKE3 of the JSON), so every backend stores
them like any other object. Puts read them to learn whether a collection may
have deleted something they relied on (see docs/gc.md and `cas.gc.fence`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from cas.codec import decode_object, stored_size_bound
from cas.errors import CasError, FormatError, IntegrityError, ObjectNotFound
from cas.ids import ObjectId
from cas.objects import now_rfc3339
from cas.store.base import Kind, ObjectInfo, Store
from cas.store.encoded import write_object

FORMAT: Final = "cas.gc-record/1"
MAX_RECORD_BYTES: Final = 4096
MAX_LEASE_SECONDS: Final = 3600
START: Final = "start"
BEAT: Final = "beat"
DONE: Final = "done"


def new_run_id() -> str:
    """A random name for one collection run."""
    return secrets.token_hex(16)


async def write_record(store: Store, body: dict[str, Any]) -> ObjectInfo:
    """Store one record create-only and return what the store says about it (its time)."""
    data = json.dumps({"format": FORMAT, **body}, sort_keys=True).encode()
    object_id, _ = await write_object(store, Kind.GC, data)
    return await store.stat(Kind.GC, object_id)


def parse_record(data: bytes) -> dict[str, Any] | None:
    """A record's fields, or None for anything that is not a well-formed cas record."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, over-long integers, deep nesting
        return None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        return None
    if body.get("event") not in (START, BEAT, DONE) or not isinstance(body.get("run"), str):
        return None
    lease = body.get("lease_seconds", 0)
    if not isinstance(lease, int | float) or not 0 <= lease <= MAX_LEASE_SECONDS:
        return None
    seq = body.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None
    return body


@dataclass
class RunState:
    """What the records say about one run, plus when this process saw it change."""

    run: str
    lease: float = 0.0
    done: bool = False
    seq: int = -1
    """The highest heartbeat number seen (0: the start record)."""
    records: set[ObjectId] = field(default_factory=set)
    newest: datetime | None = None
    changed_at: float = field(default_factory=time.monotonic)
    """Monotonic time at which this process first saw the current set of records."""

    def lapsed(self, now: float, slack: float) -> bool:
        """No new heartbeat for a whole lease: the run may no longer delete anything."""
        return self.lease > 0 and now - self.changed_at >= self.lease + slack

    def finished(self, now: float, slack: float) -> bool:
        """Done, or silent for so long that its lease forbids further deletes."""
        return self.done or self.lapsed(now, slack)


class RunTracker:
    """Reads the `gc` namespace and keeps per-run state across readings.

    Records are immutable, so each is fetched once per tracker.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._bodies: dict[ObjectId, tuple[dict[str, Any] | None, datetime]] = {}
        self.runs: dict[str, RunState] = {}

    async def refresh(self) -> dict[str, RunState]:
        """List the records now; return the runs they describe."""
        infos = [info async for info in self.store.list(Kind.GC)]
        new = [i for i in infos if i.id not in self._bodies]
        limit = asyncio.Semaphore(max(1, self.store.capabilities.max_concurrency))

        async def load(info: ObjectInfo) -> None:
            async with limit:
                body = await _read(self.store, info.id)
            self._bodies[info.id] = (body, info.mtime)

        await asyncio.gather(*(load(i) for i in new))
        now = time.monotonic()
        seen: dict[str, RunState] = {}
        for info in infos:
            body, mtime = self._bodies[info.id]
            if body is None:
                continue
            state = seen.get(body["run"])
            if state is None:
                old = self.runs.get(body["run"])
                state = seen[body["run"]] = RunState(
                    body["run"], changed_at=old.changed_at if old else now
                )
            state.records.add(info.id)
            state.newest = mtime if state.newest is None else max(state.newest, mtime)
            if body["event"] == DONE:
                state.done = True
            else:
                state.seq = max(state.seq, int(body.get("seq", 0)))
            state.lease = max(state.lease, float(body.get("lease_seconds", 0)))
        for run, state in seen.items():
            old = self.runs.get(run)
            if old is None or not state.records <= old.records:
                state.changed_at = now
        self.runs = seen
        return seen


async def _read(store: Store, object_id: ObjectId) -> dict[str, Any] | None:
    try:
        blob = await store.get(Kind.GC, object_id, max_size=stored_size_bound(MAX_RECORD_BYTES))
        data = decode_object(Kind.GC, object_id, blob, MAX_RECORD_BYTES)
    except ObjectNotFound:
        return None  # removed by housekeeping after listing: an old, finished run
    except (IntegrityError, FormatError):
        return None
    except CasError:
        raise
    return parse_record(data)


def record_body(event: str, run: str, **fields: Any) -> dict[str, Any]:
    """The fields of a record; `nonce` keeps every beat a distinct object."""
    return {
        "event": event,
        "run": run,
        "time": now_rfc3339(),
        "nonce": secrets.token_hex(8),
        **fields,
    }
