"""Fuzz the garbage-collection record parser (`cas.gc.records.parse_record`).

Any writer may create objects in the `gc` namespace (the server checks only
that a record hashes to its name), and every collection reads them all to
learn which runs hold a lease. docs/format.md: readers ignore what does not
parse as a record. So a hostile record must give None, never an exception
that would stop every later collection.
"""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from cas.gc.records import FORMAT, MAX_LEASE_SECONDS, parse_record
from tests.fuzz import bounded, fuzz_settings

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=10),
        st.sampled_from(["start", "beat", "done", FORMAT]),
    ),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)
record_like = st.fixed_dictionaries(
    {},
    optional={
        "format": st.one_of(st.just(FORMAT), json_values),
        "event": st.one_of(st.sampled_from(["start", "beat", "done"]), json_values),
        "run": st.one_of(st.text(alphabet="0123456789abcdef", max_size=32), json_values),
        "seq": st.one_of(st.integers(-3, 2**70), json_values),
        "lease_seconds": st.one_of(st.floats(), st.integers(-5, 10**6), json_values),
        "grace_seconds": json_values,
        "nonce": json_values,
    },
)
payloads = st.one_of(
    record_like.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(1, 100_000).map(lambda n: b"[" * n),
    st.integers(4300, 6000).map(lambda n: b'{"seq":' + b"9" * n + b"}"),
)


@fuzz_settings()
@given(data=payloads)
@example(data=b"[" * 100_000)  # was RecursionError
@example(data=b'{"seq":' + b"9" * 5000 + b"}")  # was ValueError (integer string too long)
def test_any_gc_object_is_a_record_or_ignored(data):
    with bounded():
        record = parse_record(data)
    if record is None:
        return
    assert record["format"] == FORMAT and record["event"] in ("start", "beat", "done")
    assert isinstance(record["run"], str)
    lease = record.get("lease_seconds", 0)
    assert 0 <= lease <= MAX_LEASE_SECONDS
    seq = record.get("seq", 0)
    assert isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
