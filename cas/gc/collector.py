"""Garbage collection: keep what the roots reach, delete the rest once it is old enough.

1. Write a start record (`cas.gc.records`) and keep a lease alive with
   heartbeat records; deletes happen only while the lease is fresh.
2. Roots: every ref the retention rules keep, plus every manifest younger
   than the grace period (a run passed on by id but never named).
3. Mark: every index of every root manifest, and every pack those indexes
   name (an index lists everything its manifest reaches, so no tree is
   read); names go to an on-disk `IdSet`, and the live bytes of each pack
   are counted.
4. Sweep manifests, then indexes, then packs: list each namespace (16
   prefixes concurrently) and delete, in batches and concurrently, what is
   unreachable and older than the grace period, measured from the start
   record's store time.
5. Repack (`cas.gc.repack`): copy the live frames of mostly dead packs into new
   packs and replace the indexes naming them; the old packs, unreferenced
   now, go in a later run.
6. Write a done record; drop records of runs finished long ago.

Why concurrent puts stay correct is argued in docs/gc.md; the put side is
`cas.gc.fence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from cas.errors import CasError, IntegrityError, LeaseLost, ObjectNotFound
from cas.gc.fence import RECORD_KEEP_SECONDS
from cas.gc.idset import IdSet
from cas.gc.marking import Marker
from cas.gc.records import BEAT, DONE, START, RunTracker, new_run_id, record_body, write_record
from cas.gc.repack import Marks, repack
from cas.gc.retention import Retention
from cas.ids import ObjectId
from cas.repo import Repository, read_pack_entries
from cas.store.base import Kind, ObjectInfo, RefInfo, Store
from cas.store.listing import list_concurrently

DEFAULT_GRACE: Final = 86400.0
DEFAULT_LEASE: Final = 300.0
BEAT_MAX_INTERVAL: Final = 10.0
"""Beats (and re-listings of the roots) come at least this often; puts wait about two."""
_BATCH: Final = 1000
_HEX: Final = "0123456789abcdef"
SWEEP_ORDER: Final = (Kind.MANIFEST, Kind.INDEX, Kind.PACK)
"""Referrers first: a half-finished sweep never leaves a manifest naming a deleted pack."""
REPACK_BELOW: Final = 0.7
"""A kept pack whose live frames fill less than this fraction of it is repacked.

Chosen by `benchmarks/churn.py` (docs/benchmarks.md): over 38 simulated CI runs,
stored/live stayed above 1.3x in 4 of 29 runs at 0.7 against 12 at 0.5, for
about 11 MB of frames copied per run."""


@dataclass(frozen=True)
class GcOptions:
    """What to keep and how carefully."""

    retention: Retention = field(default_factory=Retention)
    grace: float = DEFAULT_GRACE
    lease: float = DEFAULT_LEASE
    dry_run: bool = False
    concurrency: int | None = None
    repack_below: float = REPACK_BELOW
    """0 disables repacking."""


@dataclass
class KindCount:
    """Objects and stored bytes of one namespace."""

    objects: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        """Count one object of `size` stored bytes."""
        self.objects += 1
        self.bytes += size


@dataclass
class GcReport:
    """What a run kept, deleted (or would delete), and could not read."""

    dry_run: bool
    refs_expired: list[RefInfo] = field(default_factory=list)
    roots: int = 0
    deleted: dict[Kind, KindCount] = field(
        default_factory=lambda: {k: KindCount() for k in SWEEP_ORDER}
    )
    kept_young: dict[Kind, KindCount] = field(
        default_factory=lambda: {k: KindCount() for k in SWEEP_ORDER}
    )
    kept_reachable: dict[Kind, KindCount] = field(
        default_factory=lambda: {k: KindCount() for k in SWEEP_ORDER}
    )
    unreadable: list[tuple[Kind, ObjectId, str]] = field(default_factory=list)
    records_removed: int = 0
    sweep_skipped: bool = False
    """A root manifest's index was unreadable, so packs were kept."""
    repacked: KindCount = field(default_factory=KindCount)
    """Sparse packs whose live frames were copied into new packs."""
    repack_written: KindCount = field(default_factory=KindCount)
    """New packs written by repacking."""
    indexes_rewritten: int = 0

    @property
    def bytes_reclaimed(self) -> int:
        """Stored bytes deleted (or, in a dry run, that would be)."""
        return sum(c.bytes for c in self.deleted.values())


class Lease:
    """A run's right to delete, renewed by heartbeat records (docs/gc.md, "The lease").

    A delete may start only within `lease / 2` of the start of the last
    heartbeat that succeeded; puts treat a run whose records stayed
    unchanged for a whole lease as unable to delete anything more. Before
    each beat the collector re-lists its roots (`before_beat`), so beat `k`
    also tells puts that every manifest visible before it began is marked.
    """

    def __init__(self, store: Store, lease: float, grace: float) -> None:
        self.store = store
        self.lease = lease
        self.grace = grace
        self.interval = min(lease / 4, BEAT_MAX_INTERVAL)
        self.run = new_run_id()
        self.before_beat: Callable[[], Awaitable[None]] | None = None
        self._renewed = 0.0
        self._seq = 0
        self._beats: list[ObjectId] = []
        self._task: asyncio.Task[None] | None = None
        self.started: datetime | None = None

    async def start(self) -> datetime:
        """Write the start record; its store time is the run's clock for the grace period."""
        began = time.monotonic()
        info = await write_record(
            self.store,
            record_body(START, self.run, seq=0, lease_seconds=self.lease, grace_seconds=self.grace),
        )
        self._renewed = began
        self.started = info.mtime
        self._task = asyncio.create_task(self._beat_forever())
        return info.mtime

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            began = time.monotonic()
            with contextlib.suppress(CasError):  # a failed beat just lets the lease run out
                if self.before_beat is not None:
                    await self.before_beat()
                info = await write_record(
                    self.store,
                    record_body(BEAT, self.run, seq=self._seq + 1, lease_seconds=self.lease),
                )
                self._seq += 1
                self._beats.append(info.id)
                self._renewed = began

    def check(self) -> None:
        """Raise unless a delete may start now."""
        if time.monotonic() - self._renewed >= self.lease / 2:
            raise LeaseLost(
                f"garbage collection could not renew its lease within {self.lease / 2:g}s "
                "and stopped deleting; run it again"
            )

    async def finish(self, summary: dict[str, int]) -> None:
        """Stop beating, record that no delete of this run is outstanding, drop the beats."""
        await self.stop()
        await write_record(self.store, record_body(DONE, self.run, **summary))
        await self.store.delete_many(Kind.GC, self._beats)

    async def stop(self) -> None:
        """Stop the heartbeat (on success or failure)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class _Gate:
    """Deletes run together; marking waits for them to finish and holds new ones back."""

    def __init__(self) -> None:
        self._active = 0
        self._marking = False
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def deleting(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._marking)
            self._active += 1
        try:
            yield
        finally:
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def marking(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._marking)
            self._marking = True
            await self._cond.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._marking = False
                self._cond.notify_all()


class Collector:
    """One run of `cas gc`."""

    def __init__(self, repo: Repository, options: GcOptions) -> None:
        self.repo = repo
        self.store = repo.store
        self.options = options
        self.concurrency = options.concurrency or max(1, self.store.capabilities.max_concurrency)
        self.report = GcReport(dry_run=options.dry_run)
        self._lease: Lease | None = None
        self._gate = _Gate()
        self._roots_lock = asyncio.Lock()
        self._known_refs: set[str] | None = None
        self._cutoff = datetime.now(UTC)
        self._marker: Marker
        self.pack_sizes: dict[ObjectId, int] = {}
        """Sizes of the packs kept by the sweep (they are listed anyway)."""
        self._started = datetime.now(UTC)

    async def run(self) -> GcReport:
        """Mark and sweep; with `dry_run` nothing is written or deleted."""
        with IdSet([k.value for k in SWEEP_ORDER]) as reachable:
            self._marker = Marker(self.repo, self.concurrency, reachable, self.report.unreadable)
            try:
                return await self._run()
            finally:
                if self._lease is not None:
                    await self._lease.stop()

    async def _run(self) -> GcReport:
        if self.options.dry_run:
            started = datetime.now(UTC)
        else:
            self._lease = Lease(self.store, self.options.lease, self.options.grace)
            self._lease.before_beat = self._refresh_roots
            started = await self._lease.start()
        self._started = started
        self._cutoff = cutoff = started - timedelta(seconds=self.options.grace)
        async with self._roots_lock:
            refs = [r async for r in self.store.list_refs()]
            expired = self.options.retention.expired(refs, started)
            self.report.refs_expired = expired
            self._known_refs = {r.name for r in refs}
            gone = {r.name for r in expired}
            roots = {r.target for r in refs if r.name not in gone}
            async for listed in list_concurrently(self.store, Kind.MANIFEST, self.concurrency):
                roots.update(info.id for info in listed if info.mtime >= cutoff)
        self.report.roots = len(roots)
        await self._marker.mark(sorted(roots))
        if self._lease is not None:
            for ref in expired:
                self._lease.check()
                await self.store.delete_ref(ref.name)
        for kind in SWEEP_ORDER:
            if self._sweepable(kind):
                await self._sweep(kind, cutoff)
        if self.options.repack_below > 0 and self._sweepable(Kind.PACK):
            await self._repack()
        if self._lease is not None:
            await self._housekeep_records(started)
            await self._lease.finish(
                {f"deleted_{k.value}s": c.objects for k, c in self.report.deleted.items()}
            )
        return self.report

    async def _repack(self) -> None:
        done = await repack(
            self.store,
            Marks(self._marker.live, self.pack_sizes, self._marker.marked_indexes),
            below=self.options.repack_below,
            dry_run=self.options.dry_run,
            before_delete=self.check_lease,
        )
        for size in done.pack_sizes:
            self.report.repacked.add(size)
        for size in done.written:
            self.report.repack_written.add(size)
        self.report.unreadable.extend((Kind.PACK, pack, why) for pack, why in done.unreadable)
        self.report.indexes_rewritten += done.indexes_rewritten

    def check_lease(self) -> None:
        """Raise unless a delete may start now (no lease in a dry run: nothing is deleted)."""
        if self._lease is not None:
            self._lease.check()

    async def _refresh_roots(self) -> None:
        """Before a beat: mark the manifests and refs that appeared since the last listing.

        Deletes wait meanwhile, and any delete decided before is finished
        first, so after the beat no delete can touch what a new root reaches.
        """
        async with self._roots_lock:
            if self._known_refs is None:
                return  # the first listing has not started: it will see everything
            async with self._gate.marking():
                roots: set[ObjectId] = set()
                async for ref in self.store.list_refs():
                    if ref.name not in self._known_refs:
                        self._known_refs.add(ref.name)
                        roots.add(ref.target)
                async for listed in list_concurrently(self.store, Kind.MANIFEST, self.concurrency):
                    roots.update(info.id for info in listed if info.mtime >= self._cutoff)
                await self._marker.mark(sorted(roots))
                await self._marker.mark_late_indexes(self._started)

    def _sweepable(self, kind: Kind) -> bool:
        """Manifests and indexes always; packs only while every root was read whole.

        Which packs a root whose manifest or index could not be read needs is
        unknown, so no pack is deleted (restic's prune likewise stops when
        reachable data is missing).
        """
        if kind is not Kind.PACK:
            return True
        if self._marker.unread_roots or any(k is Kind.INDEX for k, _, _ in self.report.unreadable):
            self.report.sweep_skipped = True
            return False
        return True

    # ------------------------------------------------------------ mark

    # ------------------------------------------------------------ sweep

    async def _sweep(self, kind: Kind, cutoff: datetime) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.concurrency)
        pending_batches = asyncio.Semaphore(2 * self.concurrency)
        batch: list[ObjectInfo] = []

        async def flush(items: list[ObjectInfo]) -> None:
            async with slots, self._gate.deleting():
                if not self._sweepable(kind):
                    return
                known = self._marker.reachable.contains_many(kind.value, [i.id for i in items])
                if kind is Kind.INDEX and self._marker.unread_roots:
                    known = [
                        k or bytes(i.id)[:16] in self._marker.unread_roots
                        for i, k in zip(items, known, strict=True)
                    ]
                if kind is Kind.PACK and self._marker.homeless:
                    known = await self._holding_homeless(items, known)
                doomed = []
                for info, keep in zip(items, known, strict=True):
                    if keep:
                        self.report.kept_reachable[kind].add(info.size)
                        if kind is Kind.PACK:
                            self.pack_sizes[info.id] = info.size
                    else:
                        doomed.append(info)
                if doomed and self._lease is not None:
                    self._lease.check()
                    await self.store.delete_many(kind, [i.id for i in doomed])
                for info in doomed:
                    self.report.deleted[kind].add(info.size)

        try:
            async for listed in list_concurrently(self.store, kind, self.concurrency):
                young = self.report.kept_young[kind]
                for info in listed:
                    if info.mtime >= cutoff:
                        young.add(info.size)
                    else:
                        batch.append(info)
                if len(batch) >= _BATCH:
                    await pending_batches.acquire()  # bound the batches held, hence memory
                    task = asyncio.create_task(flush(batch))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    task.add_done_callback(lambda _: pending_batches.release())
                    batch = []
            if batch:
                await flush(batch)
            await asyncio.gather(*in_flight)
        except BaseException:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            raise

    async def _holding_homeless(self, items: list[ObjectInfo], known: list[bool]) -> list[bool]:
        """Also keep unmarked packs that hold a homeless object (read from their trailers)."""
        out = []
        for info, keep in zip(items, known, strict=True):
            if not keep:
                try:
                    entries = await read_pack_entries(self.store, info.id, info.size)
                except (IntegrityError, ObjectNotFound):
                    entries = []
                keep = any((str(e.kind), bytes(e.id)) in self._marker.homeless for e in entries)
            out.append(keep)
        return out

    async def _housekeep_records(self, started: datetime) -> None:
        """Drop the records of runs that finished (or went silent) long before this one."""
        assert self._lease is not None
        tracker = RunTracker(self.store)
        runs = await tracker.refresh()
        limit = started - timedelta(seconds=RECORD_KEEP_SECONDS)
        old = [
            ids
            for run, state in runs.items()
            if run != self._lease.run and state.newest is not None and state.newest < limit
            for ids in state.records
        ]
        if old:
            self._lease.check()
            await self.store.delete_many(Kind.GC, old)
            self.report.records_removed = len(old)


async def collect(repo: Repository, options: GcOptions) -> GcReport:
    """Run one collection."""
    return await Collector(repo, options).run()
