"""The command line, run as users run it: a subprocess with a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import snapshot

ROOT = Path(__file__).parent.parent


def cas(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "cas_cli.main", *args], env=full_env, capture_output=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cas {args} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "build"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "app").write_bytes(os.urandom(3 << 20))
    (root / "bin" / "app").chmod(0o755)
    (root / "obj").mkdir()
    (root / "obj" / "a.o").write_bytes(b"object" * 1000)
    (root / "README").write_text("hello\n")
    (root / "empty-dir").mkdir()
    os.symlink("bin/app", root / "app-link")
    return root


def test_put_prints_id_on_stdout_and_summary_on_stderr(src, tmp_path):
    proc = cas("put", "--store", str(tmp_path / "s"), str(src))
    manifest_id = proc.stdout.decode().strip()
    assert len(manifest_id) == 64 and all(c in "0123456789abcdef" for c in manifest_id)
    stderr = proc.stderr.decode()
    assert stderr.count("\n") == 1 and "put 3 files" in stderr
    assert "\r" not in stderr  # no progress bar when stderr is not a terminal


def test_get_ls_cat_round_trip(src, tmp_path):
    store = str(tmp_path / "s")
    manifest_id = cas("put", "--store", store, str(src), "-q").stdout.decode().strip()
    cas("get", "--store", store, manifest_id, str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)
    listing = cas("ls", "--store", store, manifest_id).stdout.decode().splitlines()
    assert any(line.endswith(" bin/app") and line.startswith("-rwxr-xr-x") for line in listing)
    assert any(line.endswith("app-link -> bin/app") for line in listing)
    assert any(line.endswith("empty-dir/") for line in listing)
    sub = cas("ls", "--store", store, manifest_id, "obj").stdout.decode().splitlines()
    assert len(sub) == 1 and sub[0].endswith("obj/a.o")
    assert (
        cas("cat", "--store", store, manifest_id, "bin/app").stdout
        == (src / "bin" / "app").read_bytes()
    )


def test_json_outputs(src, tmp_path):
    store = str(tmp_path / "s")
    put = json.loads(cas("put", "--store", store, str(src), "--json").stdout)
    assert put["files"] == 3 and put["chunks_new"] == put["chunks"] > 0
    again = json.loads(cas("put", "--store", store, str(src), "--json").stdout)
    assert again["chunks_new"] == 0 and again["bytes_uploaded"] == 0
    got = json.loads(
        cas("get", "--store", store, put["manifest"], str(tmp_path / "o"), "--json").stdout
    )
    assert got["files"] == 3 and got["bytes_from_store"] > 0
    rows = json.loads(cas("ls", "--store", store, put["manifest"], "--json").stdout)
    app = next(r for r in rows if r["path"] == "bin/app")
    assert app["size"] == 3 << 20 and app["mode"] == 0o755 and app["chunks"] >= 1


def test_default_store_is_in_xdg_data_home(src, tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    manifest_id = cas("put", str(src), "-q", env=env).stdout.decode().strip()
    assert (tmp_path / "xdg" / "cas" / "store" / "cas-store.json").exists()
    cas("get", manifest_id, str(tmp_path / "out"), env=env)
    assert snapshot(tmp_path / "out") == snapshot(src)
    # CAS_STORE overrides the default, --store overrides CAS_STORE.
    env2 = {**env, "CAS_STORE": f"file://{tmp_path / 'other'}"}
    cas("put", str(src), "-q", env=env2)
    assert (tmp_path / "other" / "cas-store.json").exists()


def test_refs_are_create_only_from_the_cli(src, tmp_path):
    store = str(tmp_path / "s")
    first = cas("put", "--store", store, str(src), "--ref", "ci/main/1", "-q").stdout.decode()
    cas("get", "--store", store, "ci/main/1", str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)
    (src / "README").write_text("changed\n")
    packs = sorted((tmp_path / "s" / "pack").rglob("*"))
    proc = cas("put", "--store", store, str(src), "--ref", "ci/main/1", check=False)
    assert proc.returncode == 6
    assert b"already exists; nothing was uploaded" in proc.stderr
    assert sorted((tmp_path / "s" / "pack").rglob("*")) == packs  # checked before uploading
    # The ref still names the first manifest.
    listing = cas("cat", "--store", store, "ci/main/1", "README").stdout
    assert listing == b"hello\n" and len(first.strip()) == 64


def test_labels_and_excludes_are_recorded(src, tmp_path):
    store = tmp_path / "s"
    manifest_id = (
        cas(
            "put",
            "--store",
            str(store),
            str(src),
            "--label",
            "commit=abc",
            "--exclude",
            "*.o",
            "-q",
        )
        .stdout.decode()
        .strip()
    )
    from cas import codec

    blob = (store / "manifest" / manifest_id[:2] / manifest_id).read_bytes()
    manifest = json.loads(codec.decode(blob, 1 << 20, kind="manifest", object_id=manifest_id))
    assert manifest["labels"] == {"commit": "abc"}
    assert manifest["excludes"] == ["*.o"]
    assert manifest["totals"]["files"] == 2


def test_a_store_inside_the_source_is_not_stored(src, tmp_path):
    store = src / ".cas-store"
    env = {"CAS_CACHE_DIR": str(src / ".cache")}
    first = cas("put", "--store", str(store), str(src), "--json", env=env)
    second = cas("put", "--store", str(store), str(src), "--json", env=env)
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert {s["path"] for s in b["skipped"]} == {".cas-store", ".cache"}
    assert a["files"] == b["files"] == 3
    out = tmp_path / "out"
    cas("get", "--store", str(store), b["manifest"], str(out), env=env)
    assert not (out / ".cas-store").exists() and (out / "bin" / "app").exists()


def test_cache_info_prune_clear(src, tmp_path):
    store = str(tmp_path / "s")
    env = {"CAS_CACHE_DIR": str(tmp_path / "cache")}
    manifest_id = cas("put", "--store", store, str(src), "-q", env=env).stdout.decode().strip()
    cas("get", "--store", store, manifest_id, str(tmp_path / "out0"), env=env)
    info = json.loads(cas("cache", "info", "--json", env=env).stdout)
    assert info["entries"] == 0  # a store on a local disk is not copied into the cache
    cas("get", "--cache", "--store", store, manifest_id, str(tmp_path / "out"), env=env)
    info = json.loads(cas("cache", "info", "--json", env=env).stdout)
    assert info["entries"] > 0 and info["bytes"] > 0
    pruned = json.loads(cas("cache", "prune", "--max-size", "0", "--json", env=env).stdout)
    assert pruned["bytes"] == 0 and pruned["freed_bytes"] == info["bytes"]
    cas("get", "--cache", "--store", store, manifest_id, str(tmp_path / "out2"), env=env)
    cleared = json.loads(cas("cache", "clear", "--json", env=env).stdout)
    assert cleared["entries"] == 0
    assert not (tmp_path / "cache" / "files.lmdb").exists()
    assert b"chunks" in cas("cache", "info", env=env).stdout


def test_a_command_imports_only_its_own_module():
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from cas_cli.main import build_parser\n"
        "build_parser(['put', '--store', 'x', 'dir'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('cas_cli.commands.')))\n"
        "build_parser([])\n"
        "print(len([m for m in sys.modules if m.startswith('cas_cli.commands.')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    only_put, every = out.stdout.decode().splitlines()
    assert only_put == "['cas_cli.commands.put']"
    from cas_cli.main import _MODULE, COMMANDS

    modules = {_MODULE.get(name, name) for name in COMMANDS}
    assert int(every) == len(modules)  # every command module, for `cas --help`
