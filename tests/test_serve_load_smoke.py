"""The `cas serve` load benchmark never rots: a 3-second run has no unexpected errors.

It puts and gets real trees through the client while small requests flood
the server, two uploads trickle their bodies, and oversize bodies must be
refused with 413 (benchmarks/serve_load.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_serve_load_smoke_has_no_unexpected_errors(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "serve_load.py"),
            "--seed",
            "1",
            "--seconds",
            "3",
            "--clients",
            "1",
            "--flood",
            "2",
            "--slow",
            "2",
            "--json",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["unexpected_errors"] == []
    assert result["oversize"].get("413", 0) >= 2 and set(result["oversize"]) == {"413"}
    assert result["latency"]["put"] and result["latency"]["stat"]
    assert not any(status.startswith("5") for status in result["requests_by_status"])
