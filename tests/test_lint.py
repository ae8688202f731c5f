"""The code base stays ruff clean (style is part of the test command)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_ruff_check_passes():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed; install the test extras: pip install -e '.[test]'")
    proc = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_passes():
    """Type hints are checked, not only written (the settings are in pyproject.toml)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "cas", "cli"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    if "No module named mypy" in proc.stderr:
        pytest.fail("mypy is not installed; install the test extras: pip install -e '.[test]'")
    assert proc.returncode == 0, proc.stdout + proc.stderr
