"""A store layer that injects the faults a network store shows (restic's and kopia's way).

`FaultStore` sits where a real network backend sits, *under* the retry
layer: `RetryingStore(FaultStore(real store))`. At chosen calls (`at`) or at
random from a seed and a rate, it injects:

- `error`: `StoreUnavailable` before the call reaches the store (a reset connection);
- `permanent`: `PermissionDenied` before the call (a 403 no retry fixes);
- `timeout`: the call hangs past a bound, then fails as `StoreUnavailable`;
- `slow`: a delay, then the call succeeds;
- `truncate` / `flip`: a read (`get`, `get_range`, `get_many`) returns fewer
  bytes than stored, or one byte flipped;
- `duplicate`: the call reaches the store twice; the caller sees the second answer
  (a request replayed below the client, e.g. by a proxy);
- `lost_ack`: the call succeeds in the store, then its answer is lost (`StoreUnavailable`).

Listings get `error`, `permanent`, `timeout` and `slow` (the first three part way
through). Every fault that fires is counted by type in `injected`, and every
call by method in `calls`.

`python -m tests.campaigns.faults --seed N --seconds S [--backend local|serve]`
runs the campaign (`tests/campaigns/fault_campaign.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from cas.errors import CasError, PermissionDenied, StoreUnavailable
from cas.ids import ObjectId
from cas.store.base import Kind, ObjectInfo, RefInfo, Store
from cas.store.wrapping import WrappingStore

T = TypeVar("T")


class Fault(StrEnum):
    """The kinds of fault the layer injects."""

    ERROR = "error"
    PERMANENT = "permanent"
    TIMEOUT = "timeout"
    SLOW = "slow"
    TRUNCATE = "truncate"
    FLIP = "flip"
    DUPLICATE = "duplicate"
    LOST_ACK = "lost_ack"


TRANSIENT: tuple[Fault, ...] = (
    Fault.ERROR,
    Fault.TIMEOUT,
    Fault.SLOW,
    Fault.TRUNCATE,
    Fault.FLIP,
    Fault.DUPLICATE,
    Fault.LOST_ACK,
)
"""What a flaky network does; `permanent` is added only in permanent mode."""

DATA_READS = frozenset({"get", "get_range", "get_many"})
LISTINGS = frozenset({"list", "list_refs"})
_LISTING_FAULTS = frozenset({Fault.ERROR, Fault.PERMANENT, Fault.TIMEOUT, Fault.SLOW})


def applies(fault: Fault, method: str) -> bool:
    """Whether `fault` means something for `method` (damage only for reads of bytes)."""
    if method in LISTINGS:
        return fault in _LISTING_FAULTS
    if fault in (Fault.TRUNCATE, Fault.FLIP):
        return method in DATA_READS
    return True


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject where: chosen calls, and/or at random at `rate`."""

    seed: int = 0
    rate: float = 0.0
    kinds: tuple[Fault, ...] = TRANSIENT
    at: tuple[tuple[str, int, Fault], ...] = ()
    """(method, n, fault): the n-th call (from 1) of `method` gets `fault`."""
    methods: frozenset[str] | None = None
    """Random faults only on these methods (None: every method)."""
    timeout: float = 0.05
    """How long a `timeout` call hangs before it fails."""
    delay: float = 0.01
    """How long a `slow` call waits before it goes through."""
    remote: bool | None = True
    """Report the store as remote (as a network backend does); None keeps the inner value."""


class FaultStore(WrappingStore):
    """Forwards every call to `inner`, injecting the faults of `plan` (see the module doc)."""

    def __init__(self, inner: Store, plan: FaultPlan | None = None) -> None:
        super().__init__(inner)
        self.plan = plan or FaultPlan()
        if self.plan.remote is not None:
            self.capabilities = dataclasses.replace(inner.capabilities, remote=self.plan.remote)
        self.calls: Counter[str] = Counter()
        self.injected: Counter[Fault] = Counter()
        self.fired: list[tuple[str, int, Fault]] = []
        """Every fault that fired: (method, call number, fault), in order."""
        self.enabled = True
        self._rng = random.Random(self.plan.seed)
        self._at = {(m, n): f for m, n, f in self.plan.at}

    def rewrap(self) -> Callable[[Store], Store]:
        """The same plan around another connection (counts stay per process)."""
        return functools.partial(FaultStore, plan=self.plan)

    # ------------------------------------------------------------ choosing

    def _choose(self, method: str) -> tuple[int, Fault | None]:
        self.calls[method] += 1
        n = self.calls[method]
        if not self.enabled:
            return n, None
        chosen = self._at.get((method, n))
        if chosen is not None:
            return n, chosen
        plan = self.plan
        if plan.rate <= 0 or (plan.methods is not None and method not in plan.methods):
            return n, None
        if self._rng.random() >= plan.rate:
            return n, None
        kinds = [k for k in plan.kinds if applies(k, method)]
        return n, (self._rng.choice(kinds) if kinds else None)

    def _fire(self, method: str, n: int, fault: Fault) -> None:
        self.injected[fault] += 1
        self.fired.append((method, n, fault))

    async def _hang(self, method: str, n: int) -> None:
        try:
            await asyncio.wait_for(asyncio.Event().wait(), self.plan.timeout)
        except TimeoutError:
            raise StoreUnavailable(
                f"injected: {method} call {n} timed out after {self.plan.timeout:g} s"
            ) from None

    # ------------------------------------------------------------ damage

    def _damage(self, data: bytes, fault: Fault) -> bytes | None:
        """`data` cut short or with one byte flipped; None when there is nothing to damage."""
        if not data:
            return None
        if fault is Fault.TRUNCATE:
            return data[: self._rng.randrange(len(data))]
        at = self._rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << self._rng.randrange(8))]) + data[at + 1 :]

    def _damage_many(
        self, found: dict[ObjectId, bytes], fault: Fault
    ) -> dict[ObjectId, bytes] | None:
        for object_id in sorted(found):
            damaged = self._damage(found[object_id], fault)
            if damaged is not None:
                return {**found, object_id: damaged}
        return None

    # ------------------------------------------------------------ one call

    async def _call(
        self,
        method: str,
        call: Callable[[], Awaitable[T]],
        damage: Callable[[T, Fault], T | None] | None = None,
    ) -> T:
        n, fault = self._choose(method)
        if fault is None:
            return await call()
        if fault in (Fault.TRUNCATE, Fault.FLIP):
            result = await call()
            damaged = damage(result, fault) if damage is not None else None
            if damaged is None:
                return result  # nothing to damage: the fault did not happen
            self._fire(method, n, fault)
            return damaged
        self._fire(method, n, fault)
        if fault is Fault.ERROR:
            raise StoreUnavailable(f"injected: {method} call {n} failed (connection reset)")
        if fault is Fault.PERMANENT:
            raise PermissionDenied(f"injected: the store refused {method} call {n}")
        if fault is Fault.TIMEOUT:
            await self._hang(method, n)
        if fault is Fault.SLOW:
            await asyncio.sleep(self.plan.delay)
            return await call()
        if fault is Fault.DUPLICATE:
            with contextlib.suppress(CasError):  # the caller sees the second answer only
                await call()
            return await call()
        if fault is Fault.LOST_ACK:
            await call()
            raise StoreUnavailable(
                f"injected: {method} call {n} reached the store but its answer was lost"
            )
        raise AssertionError(f"unhandled fault {fault}")

    async def _listing(
        self, method: str, start: Callable[[], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        n, fault = self._choose(method)
        # A chosen fault breaks the listing at once; a random one after 0-3 items.
        targeted = (method, n) in self._at
        after = -1 if fault is None else 0 if targeted else self._rng.randrange(4)
        if fault is Fault.SLOW:
            self._fire(method, n, fault)
            await asyncio.sleep(self.plan.delay)
            fault = None
        delivered = 0
        async for item in start():
            if fault is not None and delivered == after:
                await self._fail_listing(method, n, fault)
            yield item
            delivered += 1
        if fault is not None and delivered == after:
            await self._fail_listing(method, n, fault)

    async def _fail_listing(self, method: str, n: int, fault: Fault) -> None:
        self._fire(method, n, fault)
        if fault is Fault.PERMANENT:
            raise PermissionDenied(f"injected: the store refused {method} call {n}")
        if fault is Fault.TIMEOUT:
            await self._hang(method, n)
        raise StoreUnavailable(f"injected: {method} call {n} broke off (connection reset)")

    # ------------------------------------------------------------ the interface

    async def put_if_absent(self, kind: Kind, object_id: ObjectId, data: bytes) -> bool:
        return await self._call(
            "put_if_absent", lambda: self.inner.put_if_absent(kind, object_id, data)
        )

    async def get(self, kind: Kind, object_id: ObjectId, *, max_size: int) -> bytes:
        return await self._call(
            "get", lambda: self.inner.get(kind, object_id, max_size=max_size), self._damage
        )

    async def get_range(self, kind: Kind, object_id: ObjectId, offset: int, length: int) -> bytes:
        return await self._call(
            "get_range",
            lambda: self.inner.get_range(kind, object_id, offset, length),
            self._damage,
        )

    async def stat(self, kind: Kind, object_id: ObjectId) -> ObjectInfo:
        return await self._call("stat", lambda: self.inner.stat(kind, object_id))

    def list(self, kind: Kind, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self._listing("list", lambda: self.inner.list(kind, prefix))

    async def delete(self, kind: Kind, object_id: ObjectId) -> None:
        await self._call("delete", lambda: self.inner.delete(kind, object_id))

    async def delete_many(self, kind: Kind, ids: Sequence[ObjectId]) -> None:
        await self._call("delete_many", lambda: self.inner.delete_many(kind, ids))

    async def create_ref(self, name: str, target: ObjectId) -> None:
        await self._call("create_ref", lambda: self.inner.create_ref(name, target))

    async def read_ref(self, name: str) -> ObjectId:
        return await self._call("read_ref", lambda: self.inner.read_ref(name))

    def list_refs(self, prefix: str = "") -> AsyncIterator[RefInfo]:
        return self._listing("list_refs", lambda: self.inner.list_refs(prefix))

    async def delete_ref(self, name: str) -> None:
        await self._call("delete_ref", lambda: self.inner.delete_ref(name))

    async def missing(self, kind: Kind, ids: Collection[ObjectId]) -> set[ObjectId]:
        return await self._call("missing", lambda: self.inner.missing(kind, ids))

    async def put_many(self, kind: Kind, items: Sequence[tuple[ObjectId, bytes]]) -> list[bool]:
        return await self._call("put_many", lambda: self.inner.put_many(kind, items))

    async def get_many(
        self, kind: Kind, ids: Sequence[ObjectId], *, max_size: int
    ) -> dict[ObjectId, bytes]:
        return await self._call(
            "get_many",
            lambda: self.inner.get_many(kind, ids, max_size=max_size),
            self._damage_many,
        )


def faulty(inner: Store, plan: FaultPlan, policy: Any = None) -> tuple[Store, FaultStore]:
    """`RetryingStore(FaultStore(inner))`: the faults where a network backend's would arise."""
    from cas.store.retrying import RetryingStore

    layer = FaultStore(inner, plan)
    return RetryingStore(layer, policy), layer


if __name__ == "__main__":
    from tests.campaigns.fault_campaign import main

    raise SystemExit(main())
