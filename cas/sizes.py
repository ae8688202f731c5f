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


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
MAX_DURATION_SECONDS = 100 * 365 * 86400


def parse_duration(text: str, what: str = "duration") -> float:
    """Parse `90s`, `15m`, `36h`, `7d`, `2w` or sums such as `1d12h` into seconds."""
    cleaned = (text or "").strip().lower()
    parts = _DURATION_RE.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise UsageError(
            f"invalid {what} {text!r}: expected a number with a unit s, m, h, d or w "
            "(e.g. 30s, 7d, 1d12h)"
        )
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds > MAX_DURATION_SECONDS:
        raise UsageError(f"invalid {what} {text!r}: longer than 100 years")
    return seconds


def format_duration(seconds: float) -> str:
    """`7d`, `36h`, `90s` style: the largest unit that divides evenly."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
