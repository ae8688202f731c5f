"""Telling a store on a local disk from one on a network mount (which is worth caching)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cas.store.local import LocalStore
from cas.store.mounts import filesystem_type, on_network_filesystem

TABLE = """\
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
server:/export /mnt/cas nfs4 rw,vers=4.2 0 0
/dev/vdb /mnt/cas/local xfs rw 0 0
sshfs#me@host: /mnt/remote\\040dir fuse.sshfs rw 0 0
overlay /mnt/overlay fuse.fuse-overlayfs rw 0 0
"""


@pytest.fixture
def table(tmp_path: Path) -> str:
    path = tmp_path / "mounts"
    path.write_text(TABLE)
    return str(path)


@pytest.mark.parametrize(
    ("path", "kind", "network"),
    [
        ("/home/ci/store", "ext4", False),
        ("/mnt/cas", "nfs4", True),
        ("/mnt/cas/store", "nfs4", True),
        ("/mnt/cas/local/store", "xfs", False),  # a local disk mounted inside the NFS tree
        ("/mnt/cassette", "ext4", False),  # a sibling name, not inside /mnt/cas
        ("/mnt/remote dir/s", "fuse.sshfs", True),
        ("/mnt/overlay/s", "fuse.fuse-overlayfs", False),
    ],
)
def test_longest_mount_point_decides(table, path, kind, network):
    assert filesystem_type(path, table) == kind
    assert on_network_filesystem(path, table) is network


def test_unreadable_table_means_local(tmp_path):
    assert filesystem_type("/", str(tmp_path / "absent")) is None
    assert not on_network_filesystem("/", str(tmp_path / "absent"))


def test_local_store_on_this_disk_is_not_remote(tmp_path):
    assert not LocalStore(tmp_path / "store").capabilities.remote
