"""Build and compare real directory trees for tests."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import strategies as st

# A node is bytes (file content), ("link", target) or a dict (directory).
Node = bytes | tuple | dict

ODD_NAMES = [
    os.fsdecode(b"\xff\xfe-not-utf8"),
    " leading space",
    "-dash",
    "ünïcödé",
    "日本語",
    "new\nline",
    "tab\tname",
    "x" * 200,
    "...",
    ".hidden",
]

names = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
        min_size=1,
        max_size=12,
    ).filter(
        lambda n: (
            n not in (".", "..")
            and len(os.fsencode(n)) <= 255
            # get's own temporaries in a destination; a user's file of that name is left
            # alone by `get --delete` (known limitation, see docs/architecture.md)
            and not n.startswith(".cas-tmp-")
        )
    ),
    st.sampled_from(ODD_NAMES),
)

# Sizes around the small test chunker's boundaries (min 256, avg 1024, max 4096).
contents = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=64),
    st.integers(min_value=200, max_value=20_000).map(lambda n: os.urandom(n)),
    st.sampled_from([255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097, 8192]).map(
        lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)
    ),
)
link_targets = st.sampled_from(["target", "../up", "/nonexistent/abs", "a/b/c", "."]).map(
    lambda t: ("link", t)
)
file_modes = st.sampled_from([0o644, 0o755, 0o600, 0o444, 0o700])
dir_modes = st.sampled_from([0o755, 0o700, 0o555, 0o750])
mtimes = st.integers(min_value=0, max_value=4_000_000_000 * 10**9)

leaf = st.tuples(st.one_of(contents, link_targets), file_modes, mtimes)
trees = st.recursive(
    leaf,
    lambda children: st.tuples(st.dictionaries(names, children, max_size=5), dir_modes, mtimes),
    max_leaves=25,
)
root_trees = st.dictionaries(names, trees, max_size=6)


def materialize(root: Path, spec: dict) -> None:
    """Create `spec` under root (which must exist); dir metadata set after children."""
    for name, (node, mode, mtime) in spec.items():
        path = os.path.join(os.fsencode(root), os.fsencode(name))
        if isinstance(node, dict):
            os.mkdir(path)
            materialize(Path(os.fsdecode(path)), node)
            os.chmod(path, mode)
            os.utime(path, ns=(mtime, mtime))
        elif isinstance(node, tuple):
            os.symlink(node[1], path)
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
        else:
            with open(path, "wb") as f:
                f.write(node)
            os.chmod(path, mode)
            os.utime(path, ns=(mtime, mtime))


def make_writable(root: Path) -> None:
    """Let temp-dir cleanup delete read-only directories."""
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
