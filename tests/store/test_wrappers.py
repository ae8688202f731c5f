"""The retry and call-cap layers that every network backend is wrapped in."""

from __future__ import annotations

import asyncio
import pickle
import time

import pytest

from cas.errors import AlreadyExists, IntegrityError, PermissionDenied, StoreUnavailable
from cas.ids import hash_bytes
from cas.store.base import Kind
from cas.store.limited import LimitedStore
from cas.store.local import LocalStore
from cas.store.registry import wrap_remote
from cas.store.retrying import RetryingStore, RetryPolicy
from cas.store.wrapping import WrappingStore
from tests.store.faulty import FaultyStore

FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, deadline=5)


class FailingTimes(WrappingStore):
    """Raises a chosen error on the first `times` calls of every method, then forwards."""

    def __init__(self, inner, error: Exception, times: int) -> None:
        super().__init__(inner)
        self.error, self.times, self.calls = error, times, 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error

    async def get(self, kind, object_id, *, max_size):
        self._maybe_fail()
        return await self.inner.get(kind, object_id, max_size=max_size)

    async def get_range(self, kind, object_id, offset, length):
        self._maybe_fail()
        return await self.inner.get_range(kind, object_id, offset, length)

    def list(self, kind, prefix=""):
        self._maybe_fail()
        return self.inner.list(kind, prefix)


@pytest.fixture
def local(tmp_path):
    return LocalStore(tmp_path / "s", fsync=False)


async def test_transient_failures_are_retried_until_success(local):
    oid = hash_bytes(b"x")
    await local.put_if_absent(Kind.PACK, oid, b"x")
    flaky = FailingTimes(local, StoreUnavailable("503 from the store"), times=3)
    assert await RetryingStore(flaky, FAST).get(Kind.PACK, oid, max_size=10) == b"x"
    assert flaky.calls == 4


async def test_retries_give_up_after_the_policy_with_the_last_error(local):
    flaky = FailingTimes(local, StoreUnavailable("503 from the store"), times=100)
    with pytest.raises(StoreUnavailable, match="503"):
        await RetryingStore(flaky, FAST).get(Kind.PACK, hash_bytes(b"x"), max_size=10)
    assert flaky.calls == FAST.attempts


async def test_range_reads_are_retried_like_gets_and_pass_every_layer(local):
    oid = hash_bytes(b"0123456789")
    await local.put_if_absent(Kind.PACK, oid, b"0123456789")
    flaky = FailingTimes(local, StoreUnavailable("503 from the store"), times=2)
    layered = wrap_remote(flaky, FAST)
    assert await layered.get_range(Kind.PACK, oid, 2, 5) == b"23456"
    assert flaky.calls == 3
    with pytest.raises(IntegrityError):  # permanent: not retried
        await layered.get_range(Kind.PACK, oid, 8, 5)
    assert flaky.calls == 4
    assert await FaultyStore(local, {}).get_range(Kind.PACK, oid, 0, 1) == b"0"


async def test_permanent_errors_fail_at_once(local):
    flaky = FailingTimes(local, PermissionDenied("no storage.objects.get"), times=100)
    with pytest.raises(PermissionDenied):
        await RetryingStore(flaky, FAST).get(Kind.PACK, hash_bytes(b"x"), max_size=10)
    assert flaky.calls == 1


async def test_create_ref_whose_answer_was_lost_is_a_success(local):
    """The first attempt created the ref but failed on the way back; the retry must not
    report the caller's own ref as someone else's."""
    target = hash_bytes(b"manifest")

    class LostAnswer(WrappingStore):
        failed = False

        async def create_ref(self, name, target):
            await self.inner.create_ref(name, target)
            if not self.failed:
                self.failed = True
                raise StoreUnavailable("connection reset after the write")

    await RetryingStore(LostAnswer(local), FAST).create_ref("ci/1", target)
    assert await local.read_ref("ci/1") == target


async def test_create_ref_taken_by_another_target_still_fails(local):
    await local.create_ref("ci/1", hash_bytes(b"theirs"))
    faulty = FaultyStore(local, fail_on={"create_ref": 1})
    with pytest.raises(AlreadyExists):
        await RetryingStore(faulty, FAST).create_ref("ci/1", hash_bytes(b"ours"))


async def test_listing_that_fails_before_its_first_item_is_restarted(local):
    ids = {hash_bytes(b"%d" % i) for i in range(5)}
    for oid in ids:
        await local.put_if_absent(Kind.PACK, oid, b"d")
    flaky = FailingTimes(local, StoreUnavailable("timeout"), times=2)
    listed = {info.id async for info in RetryingStore(flaky, FAST).list(Kind.PACK)}
    assert listed == ids


async def test_listing_cut_off_halfway_resumes_without_repeating_or_skipping(local):
    """A transient error late in a long listing (a gc over millions of objects) is survived."""
    ids = {hash_bytes(b"%d" % i) for i in range(50)}
    for oid in ids:
        await local.put_if_absent(Kind.PACK, oid, b"d")
    cuts = [17, 33]  # the first two listings die after this many items

    class CutOff(WrappingStore):
        async def list(self, kind, prefix=""):
            limit = cuts.pop(0) if cuts else None
            n = 0
            async for info in self.inner.list(kind, prefix):
                if limit is not None and n == limit:
                    raise StoreUnavailable("connection reset mid-listing")
                n += 1
                yield info

    listed = [info.id async for info in RetryingStore(CutOff(local), FAST).list(Kind.PACK)]
    assert sorted(listed) == sorted(ids)  # every name once
    assert cuts == []


async def test_a_listing_that_keeps_failing_gives_up_and_says_so(local):
    for i in range(3):
        await local.put_if_absent(Kind.PACK, hash_bytes(b"%d" % i), b"d")

    class AlwaysCut(WrappingStore):
        async def list(self, kind, prefix=""):
            async for info in self.inner.list(kind, prefix):
                yield info
                raise StoreUnavailable("reset")

    with pytest.raises(StoreUnavailable, match="listing gave up after"):
        [i async for i in RetryingStore(AlwaysCut(local), FAST).list(Kind.PACK)]


async def test_call_cap_bounds_calls_in_flight(local):
    in_flight = peak = 0

    class Slow(WrappingStore):
        async def stat(self, kind, object_id):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return await self.inner.stat(kind, object_id)

    oid = hash_bytes(b"x")
    await local.put_if_absent(Kind.PACK, oid, b"x")
    limited = LimitedStore(Slow(local), max_in_flight=3)
    started = time.monotonic()
    await asyncio.gather(*(limited.stat(Kind.PACK, oid) for _ in range(12)))
    assert peak == 3
    assert time.monotonic() - started >= 0.035  # four rounds of three


def test_wrapped_store_opens_the_same_layers_in_another_process(tmp_path):
    """put's worker processes must get retries and the cap too, not a bare backend."""
    wrapped = wrap_remote(LocalStore(tmp_path / "s", fsync=False), FAST)
    opener = pickle.loads(pickle.dumps(wrapped.opener()))
    reopened = opener()
    assert isinstance(reopened, RetryingStore) and reopened.policy == FAST
    assert isinstance(reopened.inner, LimitedStore)
    assert isinstance(reopened.inner.inner, LocalStore)
