"""Bearer tokens and their scopes, read from `--token-file`.

A token file holds one `SCOPE TOKEN` pair per line (`#` starts a comment).
Scopes are ordered: `read` < `write` < `admin`. `write` may only create
(objects and refs), never overwrite or delete; `admin` may also delete,
which only garbage collection needs. Lookups compare the presented token
with every configured one in constant time, so the answer's timing does not
say how much of a guess was right.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Final

from cas.errors import UsageError

MIN_TOKEN_CHARS: Final = 16


class Scope(IntEnum):
    """What a token may do; a higher scope includes the lower ones."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """The name used in token files, messages and logs."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Scope:
        """`read`, `write` or `admin`."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise UsageError(f"unknown scope {text!r}: expected read, write or admin") from None


@dataclass(frozen=True)
class TokenTable:
    """The configured tokens, as bytes with their scopes."""

    entries: tuple[tuple[bytes, Scope], ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """Parse a token file, naming the file and line of anything wrong."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read token file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"token file {path} is not UTF-8 text") from None
        entries: list[tuple[bytes, Scope]] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            where = f"{path}:{number}"
            if len(fields) != 2:
                raise UsageError(f"{where}: expected 'SCOPE TOKEN', got {len(fields)} fields")
            try:
                scope = Scope.parse(fields[0])
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None
            token = fields[1]
            if len(token) < MIN_TOKEN_CHARS:
                raise UsageError(
                    f"{where}: token shorter than {MIN_TOKEN_CHARS} characters "
                    "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe())')"
                )
            entries.append((token.encode(), scope))
        if not entries:
            raise UsageError(f"token file {path} holds no tokens")
        return cls(tuple(entries))

    def scope_of(self, token: str) -> Scope | None:
        """The highest scope `token` grants, or None; every entry is compared."""
        presented = token.encode("utf-8", errors="surrogateescape")
        best: Scope | None = None
        for known, scope in self.entries:
            if hmac.compare_digest(presented, known) and (best is None or scope > best):
                best = scope
        return best
