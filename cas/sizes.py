"""Human-readable sizes and durations, for options and summaries."""

from __future__ import annotations

import re

from cas.errors import UsageError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str, what: str = "size") -> int:
    """Parse `4G`, `512MiB`, `100k`, `123` (bytes); units are powers of 1024."""
    match = _SIZE_RE.fullmatch(text or "")
    if not match:
        raise UsageError(
            f"invalid {what} {text!r}: expected a number with an optional K/M/G/T unit"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: float) -> str:
    """`1.5 GiB` style."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
