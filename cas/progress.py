"""Progress events: the library reports, the command line renders.

The library never prints. Long operations call a `Progress`; the CLI passes
one that draws a bar on a terminal and stays quiet otherwise. Calls may come
from worker threads, so implementations must be thread-safe.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives events from `put` and `get`."""

    def advance(self, nbytes: int, files: int = 0) -> None:
        """`nbytes` more of the input were processed, and `files` more files finished."""

    def set_total(self, nbytes: int, files: int | None = None) -> None:
        """The totals (bytes, and files where counted), once known or as they grow."""

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the operation."""


class NullProgress:
    """Discards progress; collects warnings so callers can still report them."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def advance(self, nbytes: int, files: int = 0) -> None:
        """Ignore."""

    def set_total(self, nbytes: int, files: int | None = None) -> None:
        """Ignore."""

    def warn(self, message: str) -> None:
        """Remember."""
        self.warnings.append(message)
