"""Which refs a collection keeps: all of them, minus those the rules expire.

`--expire PATTERN --older-than AGE` drops matching refs created more than
AGE ago; `--keep-last N PATTERN` drops all but the N newest matching refs.
A ref is dropped when any rule drops it. Patterns are shell-style globs
over whole ref names in which `*` also matches `/`, so `ci/pr/*` covers
every ref below `ci/pr/`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Final

from cas.errors import UsageError
from cas.store.base import MAX_REF_BYTES, RefInfo

_PATTERN_CHARS: Final = re.compile(r"[A-Za-z0-9._+@=/*?\[\]!-]+")


def validate_pattern(pattern: str) -> str:
    """A ref-name glob: ref-name characters plus `* ? [ ] !`, not empty."""
    if (
        not pattern
        or len(pattern.encode()) > MAX_REF_BYTES
        or not _PATTERN_CHARS.fullmatch(pattern)
    ):
        raise UsageError(
            f"invalid ref pattern {pattern!r}: use ref-name characters [A-Za-z0-9._+@=/-] "
            "and the wildcards * ? [...]"
        )
    if any(segment in ("", ".", "..") for segment in pattern.split("/")):
        raise UsageError(f"invalid ref pattern {pattern!r}: empty, '.' or '..' segment")
    if pattern.count("[") != pattern.count("]"):
        raise UsageError(f"invalid ref pattern {pattern!r}: unbalanced [ ]")
    return pattern


@dataclass(frozen=True)
class ExpireRule:
    """Refs matching `pattern` older than `older_than` seconds are dropped."""

    pattern: str
    older_than: float

    def __post_init__(self) -> None:
        validate_pattern(self.pattern)
        if self.older_than < 0:
            raise UsageError("--older-than must not be negative")


@dataclass(frozen=True)
class KeepLastRule:
    """Of the refs matching `pattern`, only the `count` newest are kept."""

    pattern: str
    count: int

    def __post_init__(self) -> None:
        validate_pattern(self.pattern)
        if self.count < 0:
            raise UsageError(f"--keep-last count must be 0 or more, got {self.count}")


@dataclass(frozen=True)
class Retention:
    """The rules of one collection; no rules keep every ref."""

    expire: tuple[ExpireRule, ...] = ()
    keep_last: tuple[KeepLastRule, ...] = ()

    def expired(self, refs: Iterable[RefInfo], now: datetime) -> list[RefInfo]:
        """The refs the rules drop, in name order."""
        refs = list(refs)
        dropped: dict[str, RefInfo] = {}
        for rule in self.expire:
            limit = now - timedelta(seconds=rule.older_than)
            for ref in refs:
                if fnmatchcase(ref.name, rule.pattern) and ref.mtime < limit:
                    dropped[ref.name] = ref
        for keep in self.keep_last:
            matching = [r for r in refs if fnmatchcase(r.name, keep.pattern)]
            matching.sort(key=lambda r: (r.mtime, r.name), reverse=True)
            for ref in matching[keep.count :]:
                dropped[ref.name] = ref
        return sorted(dropped.values(), key=lambda r: r.name)


def rules_from_options(
    expire: Sequence[str], older_than: Sequence[float], keep_last: Sequence[tuple[str, str]]
) -> Retention:
    """Pair `--expire` with `--older-than` (one age for all, or one per pattern)."""
    if expire and not older_than:
        raise UsageError("--expire needs --older-than AGE")
    if older_than and not expire:
        raise UsageError("--older-than needs --expire PATTERN")
    if len(older_than) not in (0, 1, len(expire)):
        raise UsageError("give one --older-than for all --expire patterns, or one for each")
    ages = list(older_than) * len(expire) if len(older_than) == 1 else list(older_than)
    keeps = []
    for count_text, pattern in keep_last:
        if not re.fullmatch(r"\d{1,9}", count_text):
            raise UsageError(f"--keep-last needs a count and a pattern, got {count_text!r}")
        keeps.append(KeepLastRule(pattern, int(count_text)))
    return Retention(
        tuple(ExpireRule(p, a) for p, a in zip(expire, ages, strict=True)), tuple(keeps)
    )
