"""`--record FILE`: which files a job opened, in the order it first opened them.

One path per line (relative to the mount root, raw bytes of the names),
appended and flushed at each first open, so the trace survives a job that
is killed. A later mount can `--prefetch` the same list. Paths holding a
newline cannot be written as a line and are left out.
"""

from __future__ import annotations

import os

from cas.errors import DestinationError


class Recorder:
    """Appends each path opened for the first time to a file."""

    def __init__(self, path: str) -> None:
        try:
            self._file = open(path, "ab", buffering=0)  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise DestinationError(
                f"cannot write the access trace {path}: {exc.strerror}"
            ) from None
        self._seen: set[str] = set()
        self.count = 0

    def opened(self, path: str) -> None:
        """Note `path`, unless it was opened before."""
        if path in self._seen:
            return
        self._seen.add(path)
        raw = os.fsencode(path)
        if b"\n" in raw:
            return
        self._file.write(raw + b"\n")
        self.count += 1

    def close(self) -> None:
        """Stop recording."""
        self._file.close()


def read_trace(path: str) -> list[str]:
    """The paths of a trace (or any list of paths, one per line), in order, without repeats."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        raise DestinationError(f"cannot read the prefetch list {path}: {exc.strerror}") from None
    return list(dict.fromkeys(os.fsdecode(line) for line in lines if line.strip()))
