"""A real `cas serve` subprocess on 127.0.0.1, for the fixtures and the server tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cas.store.base import Kind

ROOT = Path(__file__).parent.parent
TOKENS = {
    "read": "read-token-0123456789abcdef",
    "write": "write-token-0123456789abcdef",
    "admin": "admin-token-0123456789abcdef",
}
_ANNOUNCE = re.compile(rb"cas serve: \S+ on (https?://[0-9.]+:\d+)")


@dataclass
class ServeProcess:
    """A running server, its store directory and its stderr (the access log)."""

    url: str
    root: Path
    log: Path
    proc: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def reset(self) -> None:
        """Empty the store between tests, keeping the directories the server has made."""
        for kind in Kind:
            base = self.root / kind.value
            if base.is_dir():
                for shard in base.iterdir():
                    for path in shard.iterdir():
                        path.unlink()
        for path in (self.root / "refs").iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in (self.root / "tmp").iterdir():
            path.unlink()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_serve(
    workdir: Path, *extra: str, tokens: dict[str, str] | None = TOKENS, timeout: float = 30
) -> ServeProcess:
    """Start `cas serve` over a new local store in `workdir`; fail (never skip) if it cannot."""
    workdir.mkdir(parents=True, exist_ok=True)
    root, log = workdir / "store", workdir / "serve.log"
    args = ["--store", str(root), "--listen", "127.0.0.1:0", *extra]
    if tokens is not None:
        token_file = workdir / "tokens"
        token_file.write_text("".join(f"{scope} {token}\n" for scope, token in tokens.items()))
        args += ["--token-file", str(token_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cas_cli.main", "serve", *args],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _ANNOUNCE.search(log.read_bytes())
        if found:
            return ServeProcess(found.group(1).decode(), root, log, proc)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"cas serve did not start: {log.read_text(errors='replace')}")
