"""Fuzzing of every parser of untrusted bytes (hypothesis).

Each property says: the parser returns a value that round-trips or keeps
its invariants, or raises the typed `CasError` named in the test; the
server answers a documented 4xx with a JSON error body and stays up.
Examples are few in the regular suite; a campaign scales them:

    CAS_FUZZ_EXAMPLES=20000 python -m pytest tests/fuzz -q

`fuzz_settings(weight)` gives `weight` x the scale: 1 for a parser called
in-process, 0.5 for one example per HTTP request, 0.01 for one subprocess
per example (at least `least`, 5 unless told). `bounded` fails an
example that runs too long instead of letting it hang the run, and
`peak_alloc` measures what a parse allocated, so a parser that believes a
declared size (2^40 entries, a 1 TiB frame) is caught before it matters.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tracemalloc
from collections.abc import Iterator

from hypothesis import HealthCheck, settings

SCALE = int(os.environ.get("CAS_FUZZ_EXAMPLES", "60"))
"""Examples per property of weight 1 (the regular suite's default is small)."""
EXAMPLE_SECONDS = float(os.environ.get("CAS_FUZZ_EXAMPLE_SECONDS", "10"))


def fuzz_settings(weight: float = 1.0, least: int = 5) -> settings:
    """Hypothesis settings for one property: scaled examples, no deadline flakiness."""
    return settings(
        max_examples=max(least, int(SCALE * weight)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
            HealthCheck.filter_too_much,
        ],
        print_blob=True,
    )


class ExampleTimeout(AssertionError):
    """An example ran past its bound: a hang is a failure, not a slow pass."""


@contextlib.contextmanager
def bounded(seconds: float = EXAMPLE_SECONDS) -> Iterator[None]:
    """Fail with `ExampleTimeout` if the body runs longer than `seconds` (main thread only)."""

    def expire(signum, frame):
        raise ExampleTimeout(f"example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def peak_alloc() -> Iterator[list[int]]:
    """Peak bytes allocated (tracemalloc) inside the block, in `result[0]` afterwards."""
    result = [0]
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield result
    finally:
        result[0] = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()
