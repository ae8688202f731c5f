"""The GitHub Action's shell step (`.github/cas-action.sh`), run for real on a local store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import snapshot

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".github" / "cas-action.sh"


def run_action(tmp_path: Path, **inputs: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    output = tmp_path / "github-output"
    output.write_text("")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(output),
        "CAS_CACHE_DIR": str(tmp_path / "cache"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "CAS_ACTION_SOURCE": str(ROOT),
        **{f"INPUT_{k.upper()}": v for k, v in inputs.items()},
    }
    env.pop("CAS_STORE", None)
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, timeout=120)
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return proc, outputs


def test_put_then_get_through_the_action(tmp_path):
    src = tmp_path / "build"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_bytes(os.urandom(200_000))
    (src / "main.o").write_bytes(b"object")
    (src / "notes.txt").write_text("hello\n")
    store = str(tmp_path / "store")
    put, out = run_action(
        tmp_path,
        command="put",
        path=str(src),
        store=store,
        ref="ci/commit/abc/1",
        exclude="*.o\n",
        labels="commit=abc\nbranch=main\n",
    )
    assert put.returncode == 0, put.stderr
    manifest = out["manifest"]
    assert re.fullmatch(r"[0-9a-f]{64}", manifest)
    expected = {path: entry for path, entry in snapshot(src).items() if path != "main.o"}

    dest = tmp_path / "restored"
    get, out2 = run_action(
        tmp_path, command="get", path=str(dest), store=store, manifest="ci/commit/abc/1"
    )
    assert get.returncode == 0, get.stderr
    assert out2["manifest"] == manifest
    assert snapshot(dest) == expected  # main.o was excluded


def test_a_wrong_command_fails_clearly(tmp_path):
    proc, out = run_action(tmp_path, command="push", path=str(tmp_path))
    assert proc.returncode == 2
    assert b"command must be put or get" in proc.stderr
    assert out == {}


def test_action_yml_runs_the_tested_script():
    text = (ROOT / "action.yml").read_text()
    assert "$GITHUB_ACTION_PATH/.github/cas-action.sh" in text
    for name in re.findall(r"INPUT_([A-Z]+)", text):
        assert f"INPUT_{name}" in SCRIPT.read_text(), name
