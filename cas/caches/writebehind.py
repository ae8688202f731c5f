"""Writes behind the reader: handed to one background thread, committed in batches.

A synchronous LMDB commit (an fsync) must never sit on a read's path. The
chunk cache hands verified blobs here and returns at once; one writer
thread commits whatever is pending in one transaction (commits, not bytes,
are the expensive part) and applies access-time refreshes. Pending blobs
are visible to this process's reads as if committed, and bounded: a writer
that falls that far behind makes `add` wait a moment, then the entries are
dropped (a cache only loses entries).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

Pending = tuple[bytes, int]
"""A blob waiting for its commit, and its access time (ns)."""
Commit = Callable[[list[tuple[bytes, Pending]]], None]
Touches = Callable[[dict[bytes, tuple[int, int]]], None]

_FULL_WAIT_S: Final = 1.0
"""How long `add` waits for room among the pending writes before it drops entries."""


class WriteBehind:
    """Pending writes of one cache and the thread that commits them."""

    def __init__(
        self,
        commit: Commit,
        touch: Touches,
        pending_max: int,
        touch_interval_ns: int,
    ) -> None:
        self._commit = commit
        self._touch = touch
        self._pending_max = pending_max
        self._touch_interval_ns = touch_interval_ns
        self._cond = threading.Condition()
        self._pending: dict[bytes, Pending] = {}
        self._pending_size = 0
        self._touches: dict[bytes, tuple[int, int]] = {}
        """Access-time refreshes for the writer: key -> (time ns, size)."""
        self._writing = False
        self._writer: threading.Thread | None = None
        self._closed = False
        self.dropped = 0
        """Entries not cached because the writer was too far behind (or closed)."""

    @property
    def idle(self) -> bool:
        """Nothing pending (a cheap check before looking up pending blobs)."""
        return not self._pending

    def add(self, batch: list[tuple[bytes, bytes]], now: int) -> None:
        """Hand blobs over; waits (at most `_FULL_WAIT_S`) only when pending writes are full."""
        deadline = None
        with self._cond:
            self._ensure_writer()
            for key, blob in batch:
                if key in self._pending:
                    continue
                while self._pending_size + len(blob) > self._pending_max and self._pending:
                    if self._closed:
                        break
                    deadline = deadline or time.monotonic() + _FULL_WAIT_S
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.notify_all()
                    self._cond.wait(left)
                if self._closed or (
                    self._pending and self._pending_size + len(blob) > self._pending_max
                ):
                    self.dropped += 1
                    continue
                self._pending[key] = (blob, now)
                self._pending_size += len(blob)
            self._cond.notify_all()

    def touch(self, key: bytes, now: int, size: int) -> None:
        """Refresh an entry's access time: by the writer, off the reader's path."""
        with self._cond:
            if self._closed:
                return
            self._touches[key] = (now, size)
            self._ensure_writer()
            self._cond.notify_all()

    def blob(self, key: bytes, now: int) -> bytes | None:
        """A pending blob (its access time refreshed like a committed entry's), or None."""
        with self._cond:
            item = self._pending.get(key)
            if item is None:
                return None
            blob, stamp = item
            if now - stamp > self._touch_interval_ns:
                self._pending[key] = (blob, now)
            return blob

    def among(self, keys: Iterable[bytes]) -> set[bytes]:
        """The keys among `keys` that are pending."""
        with self._cond:
            return {k for k in keys if k in self._pending} if self._pending else set()

    def forget(self, key: bytes) -> None:
        """Drop a pending blob (found damaged)."""
        with self._cond:
            item = self._pending.pop(key, None)
            if item is not None:
                self._pending_size -= len(item[0])

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write handed over so far is committed (or dropped); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._touches or self._writing:
                if self._writer is None or not self._writer.is_alive():
                    self._start_writer()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> bool:
        """Commit what is pending and stop the writer; False if it was closed already."""
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        return True

    def _ensure_writer(self) -> None:
        """Start the writer if it is not running (called with `_cond` held)."""
        if not self._closed and (self._writer is None or not self._writer.is_alive()):
            self._start_writer()

    def _start_writer(self) -> None:
        self._writer = threading.Thread(
            target=self._write_loop, name="cas-cache-writer", daemon=True
        )
        self._writer.start()

    def _write_loop(self) -> None:
        """Commit pending blobs and refreshes, one transaction per round, until closed."""
        while True:
            with self._cond:
                while not self._pending and not self._touches and not self._closed:
                    self._cond.wait()
                if not self._pending and not self._touches:
                    return  # closed and drained
                batch = list(self._pending.items())
                touches, self._touches = self._touches, {}
                self._writing = True
            try:
                if touches:
                    self._touch(touches)
                if batch:
                    self._commit(batch)
            finally:
                with self._cond:
                    for key, item in batch:
                        if self._pending.get(key) is item:
                            del self._pending[key]
                            self._pending_size -= len(item[0])
                    self._writing = False
                    self._cond.notify_all()
