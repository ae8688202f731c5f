"""Retention rules and durations: properties and hostile input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.errors import UsageError
from cas.gc.retention import ExpireRule, KeepLastRule, Retention, rules_from_options
from cas.ids import ObjectId
from cas.sizes import format_duration, parse_duration
from cas.store.base import RefInfo

NOW = datetime(2026, 6, 1, tzinfo=UTC)
segment = st.sampled_from(["ci", "main", "pr", "1", "2", "build", "x.y", "a-b"])
ref_names = st.lists(segment, min_size=1, max_size=4).map("/".join)
refs = st.dictionaries(ref_names, st.integers(0, 30 * 86400), max_size=25).map(
    lambda d: [
        RefInfo(name, ObjectId(bytes(32)), NOW - timedelta(seconds=age)) for name, age in d.items()
    ]
)
patterns = st.sampled_from(["ci/*", "ci/main/*", "ci/pr/*", "*", "*/build", "ci/?", "nothing"])


@given(refs, patterns, st.integers(0, 30))
def test_keep_last_keeps_exactly_the_newest_matching(all_refs, pattern, count):
    from fnmatch import fnmatchcase

    dropped = Retention(keep_last=(KeepLastRule(pattern, count),)).expired(all_refs, NOW)
    matching = [r for r in all_refs if fnmatchcase(r.name, pattern)]
    assert len(dropped) == max(0, len(matching) - count)
    assert all(fnmatchcase(r.name, pattern) for r in dropped)
    kept = [r for r in matching if r not in dropped]
    if dropped and kept:
        assert min(r.mtime for r in kept) >= max(r.mtime for r in dropped)


@given(refs, patterns, st.integers(0, 40 * 86400))
def test_expire_drops_only_matching_refs_older_than_the_age(all_refs, pattern, age):
    from fnmatch import fnmatchcase

    dropped = set(Retention(expire=(ExpireRule(pattern, age),)).expired(all_refs, NOW))
    for ref in all_refs:
        old = ref.mtime < NOW - timedelta(seconds=age)
        assert (ref in dropped) == (fnmatchcase(ref.name, pattern) and old)


@given(refs, st.lists(st.tuples(patterns, st.integers(0, 5)), max_size=3))
def test_more_rules_never_keep_more(all_refs, keeps):
    rules = tuple(KeepLastRule(p, n) for p, n in keeps)
    fewer = set(Retention(keep_last=rules[:1]).expired(all_refs, NOW))
    more = set(Retention(keep_last=rules).expired(all_refs, NOW))
    assert fewer <= more


def test_no_rules_keep_everything():
    ref = RefInfo("ci/main/1", ObjectId(bytes(32)), NOW - timedelta(days=3650))
    assert Retention().expired([ref], NOW) == []


@given(st.integers(0, 5000), st.sampled_from(["s", "m", "h", "d", "w"]))
def test_durations_round_trip(number, unit):
    seconds = parse_duration(f"{number}{unit}")
    assert parse_duration(format_duration(seconds)) == seconds


def test_compound_durations():
    assert parse_duration("1d12h") == 36 * 3600
    assert parse_duration("0s") == 0
    assert parse_duration("1.5h") == 5400


@given(st.text(max_size=12))
@settings(max_examples=300)
def test_any_text_is_a_duration_or_a_usage_error(text):
    try:
        seconds = parse_duration(text)
    except UsageError as exc:
        assert "invalid duration" in str(exc)
    else:
        assert 0 <= seconds <= 100 * 365 * 86400


@pytest.mark.parametrize("bad", ["", "7", "d", "-1d", "1 d", "1y", "1d-", "inf", "nan", "0x1s"])
def test_bad_durations(bad):
    with pytest.raises(UsageError):
        parse_duration(bad)


@pytest.mark.parametrize(
    "bad", ["", "a//b", "/abs", "a/", "../x", "a/./b", "sp ace", "tab\t", "a[b", "nul\0", "é"]
)
def test_bad_patterns(bad):
    with pytest.raises(UsageError):
        ExpireRule(bad, 1.0)


def test_option_pairing():
    rules = rules_from_options(["a/*", "b/*"], [60.0], [("3", "c/*")])
    assert [r.older_than for r in rules.expire] == [60.0, 60.0]
    assert rules.keep_last == (KeepLastRule("c/*", 3),)
    with pytest.raises(UsageError):
        rules_from_options(["a/*", "b/*", "c/*"], [1.0, 2.0], [])
