"""A backend that cannot start skips on a workstation and fails where CI requires it."""

from __future__ import annotations

import pytest

from tests.gcs_emulator import required, unavailable


def test_required_backends_fail_instead_of_skipping(monkeypatch):
    monkeypatch.setenv("CAS_TEST_REQUIRE", "http,gcs")
    assert required("gcs")
    with pytest.raises(pytest.fail.Exception, match="gcs is required"):
        unavailable("gcs", "the emulator could not start")


def test_ci_requires_every_backend_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("CAS_TEST_REQUIRE", raising=False)
    monkeypatch.setenv("CI", "true")
    assert required("gcs")
    monkeypatch.setenv("CAS_TEST_REQUIRE", "http")
    assert not required("gcs")


def test_workstations_skip(monkeypatch):
    monkeypatch.delenv("CAS_TEST_REQUIRE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        unavailable("gcs", "the emulator could not start")
