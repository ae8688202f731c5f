"""Retry transient store failures with exponential back-off and full jitter.

Backends raise `StoreUnavailable` for failures worth retrying (429, 5xx,
timeouts, dropped connections) and a permanent typed error for everything
else, so one policy here serves every backend. Every store call is safe to
repeat: objects are immutable and named by content, and a create that
succeeded before its answer was lost shows up on the retry as "present".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from cas.errors import AlreadyExists, StoreUnavailable
from cas.ids import ObjectId
from cas.store.base import Kind, ObjectInfo, RefInfo, Store
from cas.store.wrapping import WrappingStore

T = TypeVar("T")
log = logging.getLogger("cas.store")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: whichever of `attempts` or `deadline` comes first."""

    attempts: int = 8
    initial: float = 0.2
    maximum: float = 10.0
    deadline: float = 120.0

    def retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(StoreUnavailable),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline),
            wait=wait_random_exponential(multiplier=self.initial, max=self.maximum),
            reraise=True,
            before_sleep=_log_retry,
        )


def _log_retry(state: RetryCallState) -> None:
    """`cas -v` shows each retry: the cause, the attempt and the wait."""
    outcome = state.outcome
    cause = outcome.exception() if outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.info("retry %d after %s; waiting %.1f s", state.attempt_number, cause, wait)


class RetryingStore(WrappingStore):
    """Repeats calls that failed with `StoreUnavailable`; other errors pass at once."""

    def __init__(self, inner: Store, policy: RetryPolicy | None = None) -> None:
        super().__init__(inner)
        self.policy = policy or RetryPolicy()

    def rewrap(self) -> Callable[[Store], Store]:
        return functools.partial(RetryingStore, policy=self.policy)

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        tries = 0
        try:
            async for attempt in self.policy.retrying():
                with attempt:
                    tries += 1
                    return await call()
        except StoreUnavailable as exc:
            if tries > 1:  # the user waited through the retries: say how long
                raise StoreUnavailable(
                    f"{exc} (gave up after {tries} tries in {time.monotonic() - started:.0f} s)"
                ) from None
            raise
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        return await self._call(lambda: self.inner.put_if_absent(kind, object_id, data))

    async def get(self, kind: Kind, object_id: ObjectId, *, max_size: int) -> bytes:
        return await self._call(lambda: self.inner.get(kind, object_id, max_size=max_size))

    async def get_range(self, kind: Kind, object_id: ObjectId, offset: int, length: int) -> bytes:
        return await self._call(lambda: self.inner.get_range(kind, object_id, offset, length))

    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        return await self._call(lambda: self.inner.stat(kind, object_id))

    async def delete(self, kind: Kind, object_id: ObjectId) -> None:
        await self._call(lambda: self.inner.delete(kind, object_id))

    async def delete_many(self, kind: Kind, ids: Sequence[ObjectId]) -> None:
        await self._call(lambda: self.inner.delete_many(kind, ids))

    async def read_ref(self, name: str) -> ObjectId:
        return await self._call(lambda: self.inner.read_ref(name))

    async def delete_ref(self, name: str) -> None:
        await self._call(lambda: self.inner.delete_ref(name))

    async def missing(self, kind: Kind, ids: Collection[ObjectId]) -> set[ObjectId]:
        return await self._call(lambda: self.inner.missing(kind, ids))

    async def put_many(self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]) -> list[bool]:
        return await self._call(lambda: self.inner.put_many(kind, items))

    async def get_many(
        self, kind: Kind, ids: Sequence[ObjectId], *, max_size: int
    ) -> dict[ObjectId, bytes]:
        return await self._call(lambda: self.inner.get_many(kind, ids, max_size=max_size))

    async def create_ref(self, name: str, target: ObjectId) -> None:
        """A retry that finds the ref already pointing at `target` is our own lost success."""
        retried = False

        async def once() -> None:
            nonlocal retried
            try:
                await self.inner.create_ref(name, target)
            except StoreUnavailable:
                retried = True
                raise
            except AlreadyExists:
                if retried and await self.inner.read_ref(name) == target:
                    return
                raise

        await self._call(once)

    def list(self, kind: Kind, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self._restartable(lambda: self.inner.list(kind, prefix), lambda i: i.id)

    def list_refs(self, prefix: str = "") -> AsyncIterator[RefInfo]:
        return self._restartable(lambda: self.inner.list_refs(prefix), lambda r: r.name)

    async def _restartable(
        self, start: Callable[[], AsyncIterator[T]], name_of: Callable[[T], object]
    ) -> AsyncIterator[T]:
        """A listing that fails anywhere is started again, skipping what it already gave.

        Listings have no set order, so the names already delivered are kept
        (32 bytes and change per object: a gc of millions of objects holds such
        sets anyway) and a restarted listing passes over them, as restic does.
        """
        delivered: set[object] = set()
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                async for item in start():
                    name = name_of(item)
                    if name in delivered:
                        continue
                    delivered.add(name)
                    yield item
                return
            except StoreUnavailable as exc:
                policy = self.policy
                if tries >= policy.attempts or time.monotonic() - started > policy.deadline:
                    raise StoreUnavailable(
                        f"{exc} (listing gave up after {tries} tries, {len(delivered)} names "
                        "delivered)"
                    ) from None
                wait = random.uniform(0, min(policy.maximum, policy.initial * 2**tries))
                log.info(
                    "listing restarted after %s (%d names so far); waiting %.1f s",
                    exc,
                    len(delivered),
                    wait,
                )
                await asyncio.sleep(wait)
