"""Fuzz what store backends parse besides objects: the local store's marker, GCS answers.

A local store's `cas-store.json` may be damaged on disk; a GCS answer may
come from a proxy instead of Google. Either way the result is a typed
error (`UsageError` for a marker that is not a format 2 one; for GCS
answers the documented `CasError` for the status), never a traceback.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from cas.errors import CasError, StoreUnavailable, UsageError
from cas.store.gcs.errors import list_call, read_call, translate_status
from cas.store.gcs.errors import parse_answer as _parse
from cas.store.gcs.location import GcsLocation
from cas.store.local import LocalStore
from cas.store.locallayout import LAYOUT, MARKER
from tests.fuzz import bounded, fuzz_settings

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda error: json.dumps({"error": error}).encode(),
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"message": json_values, "errors": st.one_of(json_values, st.lists(json_values))}
            ),
        ),
    ),
    st.integers(1, 50_000).map(lambda n: b"[" * n),
    st.just(json.dumps({"layout": LAYOUT}).encode()),
    st.just(json.dumps({"layout": "cas.local-store/1"}).encode()),
)


@fuzz_settings(0.5)
@given(marker=bodies)
@example(marker=b"\xff\xfe")  # was UnicodeDecodeError
@example(marker=b"[" * 50_000)  # was RecursionError
def test_a_damaged_local_store_marker_is_a_usage_error(marker):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        root.mkdir()
        (root / MARKER).write_bytes(marker)
        with bounded():
            try:
                store = LocalStore(root, create=False, fsync=False)
            except UsageError as exc:
                assert str(root) in str(exc)
                return
        assert json.loads(marker)["layout"] == LAYOUT
        assert store.root == root


LOCATION = GcsLocation.parse("gs://bucket/prefix")


@fuzz_settings()
@given(status=st.integers(100, 599), body=bodies, listing=st.booleans())
@example(status=500, body=b"[" * 50_000, listing=False)  # was RecursionError
def test_gcs_error_answers_are_typed(status, body, listing):
    call = list_call("list pack") if listing else read_call("pack " + "a" * 64)
    with bounded():
        error = translate_status(status, body, call, LOCATION)
    assert isinstance(error, CasError)
    if status >= 500 or status in (408, 429):
        assert isinstance(error, StoreUnavailable)


@fuzz_settings()
@given(body=bodies)
@example(body=b"[" * 50_000)  # was RecursionError
def test_gcs_json_answers_are_objects_or_store_unavailable(body):
    with bounded():
        try:
            parsed = _parse(body, read_call("stat"), LOCATION)
        except StoreUnavailable:
            return
    assert isinstance(parsed, dict)
