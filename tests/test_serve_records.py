"""Batch record framing: what the client packs the server parses back, and hostile bytes
never escape as anything but a 400 or 413."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas.errors import UsageError
from cas.httpapi import MAX_BATCH_BODY, MAX_BATCH_OBJECTS, RECORD_HEADER
from cas.ids import ObjectId
from cas.server.context import Refusal
from cas.server.routes import _parse_records
from cas.store.base import Kind
from cas.store.http import _batches

items = st.lists(
    st.tuples(st.binary(min_size=32, max_size=32).map(ObjectId), st.binary(max_size=300)),
    max_size=40,
)


@given(items)
def test_batches_round_trip_through_the_parser(objects):
    parsed = []
    for batch in _batches(objects):
        body = b"".join(RECORD_HEADER.pack(i, len(d)) + d for i, d in batch)
        assert len(batch) <= MAX_BATCH_OBJECTS and (len(batch) == 1 or len(body) <= MAX_BATCH_BODY)
        parsed += _parse_records(body, 1000, Kind.MANIFEST)
    assert parsed == objects


@given(st.binary(max_size=2000))
def test_hostile_bodies_are_refused_cleanly(body):
    try:
        records = _parse_records(body, 1000, Kind.MANIFEST)
    except UsageError:
        return
    except Refusal as exc:
        assert exc.status == 413
        return
    assert sum(RECORD_HEADER.size + len(d) for _, d in records) == len(body)


def test_batches_split_by_size_and_keep_order():
    big = [(ObjectId(bytes([n]) * 32), bytes(MAX_BATCH_BODY // 3)) for n in range(7)]
    sizes = [len(b) for b in _batches(big)]
    assert sizes == [2, 2, 2, 1]
    assert [i for b in _batches(big) for i, _ in b] == [i for i, _ in big]


@pytest.mark.parametrize(
    ("count", "expected"),
    [(MAX_BATCH_OBJECTS, [MAX_BATCH_OBJECTS]), (MAX_BATCH_OBJECTS + 1, [MAX_BATCH_OBJECTS, 1])],
)
def test_batches_split_by_count(count, expected):
    small = [(ObjectId(n.to_bytes(32, "big")), b"") for n in range(count)]
    assert [len(b) for b in _batches(small)] == expected
