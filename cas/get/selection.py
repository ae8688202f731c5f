"""Which paths of a manifest a partial `get` takes: `--include` / `--exclude`.

Patterns use the gitignore syntax of `put --exclude` (pathspec's
`GitIgnoreSpec`), matched on paths relative to the manifest (or subtree)
root: `*.py` anywhere, `/tests/` the root's `tests` directory and everything
under it, `!keep.o` to re-include.

A path is selected when it matches some include (or none were given) and no
exclude. Directories are pruned while walking, so only the trees on the way
to selected paths are fetched:

- an excluded directory is not entered (as in git and `put`);
- with includes, a directory is entered only if an include may match below
  it. A pattern anchored to the root (a `/` before its last character)
  names its leading directories literally up to the first wildcard, so
  `/tests/unit/*.py` enters `tests` and `tests/unit` and nothing else; an
  unanchored pattern (`*.py`, `tests/`) can match at any depth, so every
  directory is entered (trees are small next to the chunks they name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pathspec

from cas.errors import UsageError

_WILDCARD = re.compile(r"[*?\[\\]")


def _spec(patterns: Iterable[str], option: str) -> pathspec.GitIgnoreSpec:
    try:
        return pathspec.GitIgnoreSpec.from_lines(list(patterns))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"invalid {option} pattern: {exc}") from None


def _literal_prefix(pattern: str) -> tuple[str, ...] | None:
    """Leading directories of a root-anchored pattern; None if it may match at any depth."""
    body = pattern[1:] if pattern.startswith("!") else pattern
    stripped = body.rstrip("/")
    if "/" not in stripped:
        return None  # gitignore: no inner slash means "at any level"
    parts = [p for p in stripped.split("/") if p]
    prefix: list[str] = []
    for part in parts[:-1]:
        if _WILDCARD.search(part) or part == "**":
            break
        prefix.append(part)
    return tuple(prefix)


class Selection:
    """Compiled include and exclude patterns for one get."""

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self.include = tuple(p for p in include if p.strip() and not p.lstrip().startswith("#"))
        self.exclude = tuple(p for p in exclude if p.strip() and not p.lstrip().startswith("#"))
        self._exclude = _spec(self.exclude, "--exclude")
        self._include = _spec(self.include, "--include")
        self._each = [(p, _spec([p], "--include")) for p in self.include if not p.startswith("!")]
        self._prefixes = [_literal_prefix(p) for p in self.include if not p.startswith("!")]
        self.matched: set[str] = set()
        """Include patterns that selected at least one path so far."""

    @property
    def everything(self) -> bool:
        """True when no pattern was given (a plain, whole get)."""
        return not self.include and not self.exclude

    def _excluded(self, rel: str, is_dir: bool) -> bool:
        return bool(self.exclude) and self._exclude.match_file(rel + "/" if is_dir else rel)

    def selects(self, rel: str, is_dir: bool = False) -> bool:
        """True if the entry at `rel` is taken; notes which includes matched."""
        if self._excluded(rel, is_dir):
            return False
        if not self.include:
            return True
        key = rel + "/" if is_dir else rel
        if not self._include.match_file(key):
            return False
        for pattern, spec in self._each:
            if pattern not in self.matched and spec.match_file(key):
                self.matched.add(pattern)
        return True

    def enters(self, parts: tuple[str, ...]) -> bool:
        """True if a path below the directory `parts` may be selected (prune otherwise)."""
        if self._excluded("/".join(parts), True):
            return False
        if not self.include:
            return True
        for prefix in self._prefixes:
            if prefix is None:
                return True
            n = min(len(prefix), len(parts))
            if parts[:n] == prefix[:n]:
                return True
        return False

    def unmatched(self) -> list[str]:
        """Include patterns that selected nothing (checked after the walk)."""
        return [p for p in self.include if not p.startswith("!") and p not in self.matched]
