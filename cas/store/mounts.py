"""Which file system a path lives on, to tell a local disk from a network mount.

A chunk cache in front of a store on the same local disk only copies every
chunk a second time; in front of NFS, SMB or a FUSE network mount it saves
the network round trips, like in front of any remote store.
"""

from __future__ import annotations

import os
from typing import Final

NETWORK_TYPES: Final = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "gpfs"}
    | {
        f"fuse.{name}"
        for name in ("sshfs", "s3fs", "gcsfuse", "rclone", "goofys", "juicefs", "ceph-fuse")
    }
)


def filesystem_type(path: str, mounts: str = "/proc/self/mounts") -> str | None:
    """The type of the mount holding `path` (longest mount point prefix), or None if unknown."""
    target = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open(mounts, encoding="utf-8", errors="replace") as table:
            for line in table:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, best_type = point, fields[2]
    except OSError:
        return None
    return best_type


def on_network_filesystem(path: str, mounts: str = "/proc/self/mounts") -> bool:
    """True for NFS, SMB, 9p, distributed file systems and FUSE network mounts (sshfs, ...)."""
    return filesystem_type(path, mounts) in NETWORK_TYPES
