"""`cas put` / `cas get` against a GCS bucket, as a CI job runs them (the emulator stands in)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.conftest import snapshot
from tests.gcs_emulator import BUCKET
from tests.test_cli import cas


@pytest.fixture
def gcs_env(gcs_emulator) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": gcs_emulator.url}


@pytest.fixture
def gs_url() -> str:
    return f"gs://{BUCKET}/cli-{uuid.uuid4().hex}"


@pytest.fixture
def build(tmp_path: Path) -> Path:
    root = tmp_path / "build"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "app").write_bytes(os.urandom(3 << 20))
    (root / "bin" / "app").chmod(0o755)
    (root / "lib").mkdir()
    for i in range(40):
        (root / "lib" / f"m{i}.so").write_bytes(os.urandom(2000) * (i + 1))
    (root / "README").write_text("hello\n")
    (root / "empty-dir").mkdir()
    os.symlink("bin/app", root / "app-link")
    return root


def test_put_then_get_by_ref_round_trip(build, tmp_path, gcs_env, gs_url):
    put = cas("put", "--store", gs_url, str(build), "--ref", "ci/main/1", "--json", env=gcs_env)
    first = json.loads(put.stdout)
    assert first["chunks_new"] > 0
    cas("get", "--store", gs_url, "ci/main/1", str(tmp_path / "out"), env=gcs_env)
    assert snapshot(tmp_path / "out") == snapshot(build)

    # The next commit's put uploads only what changed.
    with (build / "bin" / "app").open("r+b") as f:
        f.seek(-100, os.SEEK_END)
        f.write(b"x" * 100)
    again = json.loads(
        cas(
            "put", "--store", gs_url, str(build), "--ref", "ci/main/2", "--json", env=gcs_env
        ).stdout
    )
    assert 0 < again["chunks_new"] <= 2
    assert again["bytes_uploaded"] < first["bytes_uploaded"] / 2
    cas("get", "--store", gs_url, again["manifest"], str(tmp_path / "out2"), env=gcs_env)
    assert snapshot(tmp_path / "out2") == snapshot(build)


def test_refs_are_create_only_from_the_command_line(build, gcs_env, gs_url):
    cas("put", "--store", gs_url, str(build), "--ref", "ci/main/7", "-q", env=gcs_env)
    proc = cas("put", "--store", gs_url, str(build), "--ref", "ci/main/7", env=gcs_env, check=False)
    assert proc.returncode == 6
    assert "cas: error: ref 'ci/main/7' already exists" in proc.stderr.decode()


def test_missing_bucket_is_one_clear_line_and_exit_code_3(build, tmp_path, gcs_env):
    proc = cas("put", "--store", "gs://no-such-bucket/ci", str(build), env=gcs_env, check=False)
    assert proc.returncode == 3
    lines = proc.stderr.decode().strip().splitlines()
    assert lines == [
        "cas: error: bucket gs://no-such-bucket does not exist (store gs://no-such-bucket/ci)"
    ]


def test_bad_gs_url_is_a_usage_error(build, gcs_env):
    proc = cas("put", "--store", "gs://Bad_Bucket/x", str(build), env=gcs_env, check=False)
    assert proc.returncode == 2
    assert "invalid bucket name 'Bad_Bucket'" in proc.stderr.decode()


async def test_put_in_worker_processes_opens_its_own_gcs_clients(
    build, tmp_path, gcs_emulator, gs_url, monkeypatch
):
    """put's worker processes reopen the store through its opener, layers included."""
    from cas.get.downloader import Downloader
    from cas.put.uploader import PutOptions, Uploader
    from cas.repo import Repository
    from cas.store.registry import open_store

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    async with open_store(gs_url) as store:
        assert store.opener() is not None
        result = await Uploader(Repository(store), PutOptions(processes=True, workers=2)).put(build)
        await Downloader(Repository(store)).get(result.manifest_id, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(build)
