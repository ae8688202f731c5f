"""Command-line habits CI users bring: global options anywhere, id prefixes, show, listing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cas.chunking import ChunkParams
from cas.errors import ObjectNotFound, PermissionDenied, UsageError
from cas.ids import hash_bytes
from cas.objects import Manifest, Totals
from cas.packindex import PackIndex
from cas.repo import Repository
from cas.store.local import LocalStore
from tests.serve_process import TOKENS, start_serve
from tests.test_bad_input import cas, ok, one_error

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stored(tmp_path):
    """A store with two manifests of different trees, named ci/main/41 and ci/main/42."""
    store = tmp_path / "store"
    ids = []
    for n in (41, 42):
        src = tmp_path / f"src{n}"
        (src / "sub").mkdir(parents=True)
        (src / "a.txt").write_text(f"version {n}\n")
        (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * (40 + n))
        out = ok(
            cas(
                tmp_path,
                "put",
                "-q",
                "--store",
                str(store),
                "--ref",
                f"ci/main/{n}",
                "--label",
                f"commit=c{n}",
                "--label",
                "branch=main",
                str(src),
            )
        )
        ids.append(out.strip())
    return store, ids


def test_global_options_before_the_command(tmp_path, stored):
    store, _ = stored
    before = json.loads(ok(cas(tmp_path, "--json", "--store", str(store), "refs")))
    after = json.loads(ok(cas(tmp_path, "refs", "--json", "--store", str(store))))
    assert before == after
    assert [r["name"] for r in before] == ["ci/main/41", "ci/main/42"]
    listed = ok(cas(tmp_path, f"--store={store}", "-q", "ls", "ci/main/42"))
    assert "sub/b.bin" in listed


def test_bare_cas_prints_help_and_fails(tmp_path):
    proc = cas(tmp_path)
    assert proc.returncode == UsageError.exit_code
    assert b"COMMAND" in proc.stdout and b"put" in proc.stdout


def test_a_mistyped_command_gets_a_suggestion(tmp_path):
    one_error(cas(tmp_path, "pu", "x"), UsageError, "unknown command 'pu'", "did you mean 'put'")


def test_a_unique_id_prefix_is_accepted(tmp_path, stored):
    store, ids = stored
    shown = json.loads(ok(cas(tmp_path, "show", "--json", "--store", str(store), ids[1][:10])))
    assert shown["id"] == ids[1]


def test_a_prefix_matching_nothing_is_not_found(tmp_path, stored):
    store, _ = stored
    one_error(cas(tmp_path, "show", "--store", str(store), "00000000"), ObjectNotFound, "00000000")


def _two_manifests_sharing_8_hex() -> list[Manifest]:
    """Manifests differing by a label until two ids share 8 hex digits (~80k tries)."""
    seen: dict[str, Manifest] = {}
    for n in range(2_000_000):
        manifest = Manifest(hash_bytes(b"root"), ChunkParams(), Totals(), labels={"n": str(n)})
        key = str(hash_bytes(manifest.to_bytes()))[:8]
        if key in seen:
            return [seen[key], manifest]
        seen[key] = manifest
    raise AssertionError("no 32-bit clash in 2M ids")


def test_an_ambiguous_prefix_is_an_error_naming_the_candidates(tmp_path):
    store_dir = tmp_path / "store"
    manifests = _two_manifests_sharing_8_hex()

    async def store_them() -> list[str]:
        async with LocalStore(store_dir, create=True) as store:
            repo = Repository(store)
            return [
                str(await repo.put_manifest(m, PackIndex(hash_bytes(m.to_bytes()))))
                for m in manifests
            ]

    ids = asyncio.run(store_them())
    line = one_error(cas(tmp_path, "show", "--store", str(store_dir), ids[0][:8]), UsageError)
    assert "ambiguous" in line and ids[0] in line and ids[1] in line
    shown = json.loads(ok(cas(tmp_path, "show", "--json", "--store", str(store_dir), ids[1][:20])))
    assert shown["id"] == ids[1]


def test_a_mistyped_ref_gets_did_you_mean(tmp_path, stored):
    store, _ = stored
    line = one_error(cas(tmp_path, "ls", "--store", str(store), "ci/main/4"), ObjectNotFound)
    assert "did you mean" in line and "ci/main/41" in line and "cas refs" in line


def test_show_names_labels_refs_and_totals(tmp_path, stored):
    store, ids = stored
    text = ok(cas(tmp_path, "show", "--store", str(store), "ci/main/41"))
    assert ids[0] in text
    assert "label commit" in text and "c41" in text
    assert "ci/main/41" in text
    assert "files" in text and "created" in text
    shown = json.loads(ok(cas(tmp_path, "show", "--json", "--store", str(store), "ci/main/41")))
    assert shown["labels"] == {"branch": "main", "commit": "c41"}
    assert shown["refs"] == ["ci/main/41"]
    assert shown["totals"]["files"] == 2
    assert shown["created"].endswith("Z")


def test_manifests_lists_newest_first_and_filters(tmp_path, stored):
    store, ids = stored
    rows = json.loads(ok(cas(tmp_path, "manifests", "--json", "--store", str(store))))
    assert {r["id"] for r in rows} == set(ids)
    stamps = [r["stored"] for r in rows]
    assert stamps == sorted(stamps, reverse=True)
    only = json.loads(
        ok(cas(tmp_path, "manifests", "--json", "--store", str(store), "--label", "commit=c41"))
    )
    assert [r["id"] for r in only] == [ids[0]]
    last = ok(cas(tmp_path, "manifests", "--store", str(store), "--last", "1"))
    assert len(last.splitlines()) == 1
    none = json.loads(
        ok(cas(tmp_path, "manifests", "--json", "--store", str(store), "--ref-prefix", "nope/"))
    )
    assert none == []


def test_diff_exit_code(tmp_path, stored):
    store, ids = stored
    same = cas(tmp_path, "diff", "-q", "--exit-code", "--store", str(store), ids[0], ids[0])
    assert same.returncode == 0
    differ = cas(tmp_path, "diff", "-q", "--exit-code", "--store", str(store), *ids)
    assert differ.returncode == 1
    assert b"a.txt" in differ.stdout
    plain = cas(tmp_path, "diff", "-q", "--store", str(store), *ids)
    assert plain.returncode == 0


@pytest.mark.parametrize(
    "args",
    [("cat", "--json", "ci/main/41", "a.txt"), ("ref", "rm", "--json", "ci/main/41")],
)
def test_json_where_it_means_nothing_is_refused(tmp_path, stored, args):
    store, _ = stored
    one_error(cas(tmp_path, *args, "--store", str(store)), UsageError, "takes no --json")
    assert ok(cas(tmp_path, "refs", "--store", str(store))).count("ci/main/41") == 1


def test_python_dash_m_cas_runs_the_command():
    proc = subprocess.run(
        [sys.executable, "-m", "cas", "--version"], capture_output=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith(b"cas ")


def _put_with_env(tmp_path: Path, extra_env: dict[str, str], *args: str):
    src = tmp_path / "big"
    src.mkdir(exist_ok=True)
    for i in range(40):
        (src / f"f{i}").write_bytes(bytes([i]) * 200_000)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), **extra_env}
    env["CAS_CACHE_DIR"] = str(tmp_path / "cache")
    env.pop("CI", None)
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "cas", "put", "--store", str(tmp_path / "s"), *args, str(src)],
        env=env,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )


def test_plain_progress_is_the_default_under_ci(tmp_path):
    proc = _put_with_env(tmp_path, {"CI": "true", "CAS_PROGRESS_INTERVAL": "0"})
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("cas put: ")]
    assert lines, proc.stderr
    assert "/s" in lines[-1] and "MiB" in lines[-1]
    assert re.search(r": \d+/40 files, ", lines[-1]), lines[-1]  # files done of the total


def test_progress_is_ndjson_with_json(tmp_path):
    proc = _put_with_env(tmp_path, {"CAS_PROGRESS_INTERVAL": "0"}, "--json", "--progress", "plain")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(ln) for ln in proc.stderr.decode().splitlines() if ln.startswith("{")]
    assert events and all(e["event"] == "progress" for e in events)
    assert events[-1]["bytes_done"] <= 40 * 200_000
    assert all(0 <= e["files_done"] <= 40 for e in events)
    assert events[-1]["files_total"] in (None, 40)
    json.loads(proc.stdout)  # stdout stays one JSON document


def test_no_progress_when_told(tmp_path):
    env = {"CI": "true", "CAS_PROGRESS_INTERVAL": "0"}
    proc = _put_with_env(tmp_path, env, "--progress", "none")
    assert proc.returncode == 0
    assert "cas put: " not in proc.stderr.decode()


def test_errors_under_json_are_json(tmp_path, stored):
    store, _ = stored
    proc = cas(tmp_path, "ls", "--json", "--store", str(store), "ci/main/9")
    assert proc.returncode == ObjectNotFound.exit_code
    (line,) = proc.stderr.decode().splitlines()
    error = json.loads(line)["error"]
    assert error["type"] == "ObjectNotFound" and error["exit_code"] == ObjectNotFound.exit_code
    assert "ci/main/9" in error["message"]
    assert proc.stdout == b""


def test_a_put_that_creates_a_store_says_so(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    store = tmp_path / "typo-store"
    first = cas(tmp_path, "put", "--store", str(store), str(src))
    assert first.returncode == 0
    assert f"created a new store at file://{store}".encode() in first.stderr
    again = cas(tmp_path, "put", "--store", str(store), str(src))
    assert again.returncode == 0
    assert b"created a new" not in again.stderr


def test_help_lists_every_environment_variable_the_code_reads(tmp_path):
    used = set()
    for path in [*ROOT.joinpath("cas").rglob("*.py"), *ROOT.joinpath("cli").rglob("*.py")]:
        used.update(re.findall(r"\bCAS_[A-Z_]+\b", path.read_text()))
    used.discard("CAS_TEST_REQUIRE")
    text = ok(cas(tmp_path, "--help"))
    missing = sorted(v for v in used if v not in text)
    assert not missing, f"cas --help does not mention {missing}"
    assert "exit codes:" in text and "10 destination unwritable" in text


def test_stats_counts_the_store_and_its_dedup(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}").write_bytes(bytes([i]) * 300_000 + bytes(range(256)) * 100)
    store = tmp_path / "store"
    for n in (1, 2, 3):
        # The same tree three times: stored once, counted three times.
        args = ("put", "-q", "--store", str(store), "--ref", f"r/{n}", "--label", f"n={n}")
        ok(cas(tmp_path, *args, str(src)))
    stats = json.loads(ok(cas(tmp_path, "stats", "--json", "--chunks", "--store", str(store))))
    assert stats["manifests"] == 3
    assert stats["refs"] == 3
    assert stats["packs"] >= 1 and stats["pack_bytes"] > 0
    assert stats["logical_bytes"] == 3 * 6 * (300_000 + 25_600)
    assert stats["dedup_ratio"] > 3  # stored once (and compressed), counted three times
    assert stats["chunks"] >= 6 and stats["trees"] == 1
    assert stats["dedup_ratio"] == stats["logical_bytes"] / stats["stored_bytes"]
    text = ok(cas(tmp_path, "stats", "--store", str(store)))
    assert "dedup ratio" in text and "refs" in text


def test_cache_info_shows_the_files_cache_too(tmp_path, stored):
    info = json.loads(ok(cas(tmp_path, "cache", "info", "--json")))
    assert info["files_cache"]["path"].endswith("files.lmdb")
    assert info["files_cache"]["bytes"] > 0  # the puts of the fixture remembered files


def test_a_refused_token_names_the_command_and_the_scope_it_needs(tmp_path):
    server = start_serve(tmp_path / "serve")
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_text("x")
        env = {"CAS_TOKEN": TOKENS["read"]}
        proc = cas(tmp_path, "put", "--store", server.url, str(src), env=env)
        line = one_error(proc, PermissionDenied, "cas put needs a token with the 'write' scope")
        assert "CAS_TOKEN" in line
        gc = cas(tmp_path, "gc", "--store", server.url, env=env)
        one_error(gc, PermissionDenied, "cas gc needs a token with the 'admin' scope")
    finally:
        server.stop()


def test_verbose_logs_the_store_the_parents_and_the_phases(tmp_path, stored):
    store, ids = stored
    src = tmp_path / "src42"
    proc = cas(tmp_path, "-v", "put", "--store", str(store), "--ref", "ci/main/43", str(src))
    assert proc.returncode == 0, proc.stderr
    text = proc.stderr.decode()
    assert f"store file://{store}" in text
    assert f"parent {ids[1]}" in text
    assert "walked and read" in text and "settled" in text
    quiet = cas(tmp_path, "put", "--store", str(store), "--ref", "ci/main/44", str(src))
    assert "walked and read" not in quiet.stderr.decode()


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_know_every_command(tmp_path, shell):
    script = ok(cas(tmp_path, "completion", shell))
    for command in ("put", "get", "show", "manifests", "stats", "gc", "serve"):
        assert command in script
    if shell == "bash":
        check = subprocess.run(["bash", "-n"], input=script.encode(), capture_output=True)
        assert check.returncode == 0, check.stderr


def test_global_options_before_a_nested_command(tmp_path, stored):
    store, _ = stored
    info = json.loads(ok(cas(tmp_path, "--json", "cache", "info")))
    assert "files_cache" in info
    ok(cas(tmp_path, "--store", str(store), "-q", "ref", "rm", "ci/main/41"))
    names = [
        r["name"] for r in json.loads(ok(cas(tmp_path, "--json", "--store", str(store), "refs")))
    ]
    assert names == ["ci/main/42"]


def test_every_error_has_one_exit_code_a_readme_row_and_a_help_line(tmp_path):
    from cas.errors import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", readme, flags=re.M))
    assert {name: int(code) for code, name in rows.items()} == EXIT_CODES
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)  # no two errors share a code
    help_text = ok(cas(tmp_path, "--help"))
    for code in EXIT_CODES.values():
        assert re.search(rf"(^|\s){code} \w", help_text.split("exit codes:")[1]), code


def test_the_man_page_lists_every_command(tmp_path):
    page = ok(cas(tmp_path, "manpage"))
    assert page.startswith(".TH CAS")
    for command in ("put", "get", "show", "manifests", "stats", "completion"):
        assert f"\\fI\\,{command}\\/" in page, command
    if shutil.which("groff"):
        rendered = subprocess.run(
            ["groff", "-man", "-Tutf8"], input=page.encode(), capture_output=True
        )
        assert rendered.returncode == 0 and b"manifests" in rendered.stdout


def test_every_command_help_ends_with_an_example(tmp_path):
    from cas_cli.main import COMMANDS, EXAMPLES

    assert set(EXAMPLES) == set(COMMANDS) - {"ref", "cache"}  # those two have actions
    text = ok(cas(tmp_path, "put", "--help"))
    assert "example: cas put ./build" in text


def test_the_documentation_ships_with_the_command(tmp_path):
    listing = ok(cas(tmp_path, "docs"))
    assert "gc" in listing and "format" in listing and "http-api" in listing
    assert ok(cas(tmp_path, "docs", "gc")).startswith("# Garbage collection")
    one_error(cas(tmp_path, "docs", "nope"), ObjectNotFound, "no chapter 'nope'", "gc")
    assert "cas docs gc" in ok(cas(tmp_path, "gc", "--help"))


def test_an_installed_copy_holds_the_documentation(tmp_path):
    """`pip install .` (not a checkout) must still answer `cas docs`, and install no `cli`."""
    target = tmp_path / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert (target / "cas_cli" / "docs" / "gc.md").is_file()
    assert not (target / "cli").exists()  # the folder maps to cas_cli, no top-level `cli`
    env = {**os.environ, "PYTHONPATH": str(target)}
    shown = subprocess.run(
        [sys.executable, "-c", "from cas_cli.main import main; main(['docs', 'gc'])"],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert shown.stdout.startswith(b"# Garbage collection"), shown.stderr
