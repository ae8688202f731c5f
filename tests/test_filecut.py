"""Cutting files from descriptors opened ahead: same entries, nothing leaked, errors kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas.chunking import ChunkParams, FastCdcChunker
from cas.errors import SourceError
from cas.put.filecut import CutSettings, FileCutter, OpenedAhead
from cas.put.listing import Excludes, list_directory

SETTINGS = CutSettings(ChunkParams(), 4096, True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def listing(root: Path):
    return [c for c in list_directory(str(root), "", Excludes(), []) if c.is_file]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for i in range(20):
        (tmp_path / f"f{i:02}").write_bytes(os.urandom(1000 * i + 1))
    return tmp_path


def test_cutting_from_opened_descriptors_gives_the_same_entries(tree):
    batch = listing(tree)
    cutter = FileCutter(SETTINGS, FastCdcChunker(ChunkParams()))
    plain = [cutter.cut(c, lambda i, d: None).entry for c in batch]
    before = open_fds()
    with OpenedAhead(batch) as opened:
        ahead = [cutter.cut(c, lambda i, d: None, opened.take(c)).entry for c in batch]
    assert ahead == plain
    assert open_fds() == before  # every descriptor closed by cut


def test_an_aborted_batch_closes_what_it_opened(tree):
    batch = listing(tree)
    cutter = FileCutter(SETTINGS, FastCdcChunker(ChunkParams()))
    before = open_fds()
    with pytest.raises(RuntimeError), OpenedAhead(batch) as opened:
        cutter.cut(batch[0], lambda i, d: None, opened.take(batch[0]))
        raise RuntimeError("the put was interrupted")
    assert open_fds() == before


def test_a_file_gone_before_the_batch_is_still_reported_by_cut(tree):
    batch = listing(tree)
    os.unlink(batch[3].path)
    cutter = FileCutter(SETTINGS, FastCdcChunker(ChunkParams()))
    with OpenedAhead(batch) as opened:
        assert opened.take(batch[3]) is None
        with pytest.raises(SourceError, match="f03"):
            cutter.cut(batch[3], lambda i, d: None, opened.take(batch[3]))


def test_a_symlink_swapped_in_is_not_followed(tree, tmp_path_factory):
    batch = listing(tree)
    secret = tmp_path_factory.mktemp("outside") / "secret"
    secret.write_bytes(b"not for the store")
    os.unlink(batch[5].path)
    os.symlink(secret, batch[5].path)
    with OpenedAhead(batch) as opened:
        assert opened.take(batch[5]) is None  # O_NOFOLLOW: left to cut, which refuses
