"""Build the benchmark corpora reproducibly under a cache directory.

    python benchmarks/corpus.py --dir DIR [--only NAME]
    python benchmarks/corpus.py --dir DIR --scale N     # only scale/scale-B (~N GB)

Corpora (each a directory under DIR; a finished one is never rebuilt):

- ``torch``: the torch 2.13.0 CPU wheel (cp311, manylinux_2_28) unpacked:
  12,248 files, 699 MB, one 434 MB shared library.
- ``numpy-A``/``numpy-B``: numpy 2.4.0 and 2.4.1 cp311 manylinux x86_64 wheels unpacked.
- ``scipy-A``/``scipy-B``: scipy 1.15.0 and 1.15.3, likewise.
- ``pywheels-A``/``pywheels-B``: many small files. Eight pure-Python wheels
  (botocore, sympy, django, plotly, babel, setuptools, pip,
  google-api-python-client) unpacked side by side into one directory, as in
  a site-packages: 25,183 files, 267 MB; B holds the next patch or minor
  release of each (25,210 files, 270 MB; ``PURE_SETS``).
- ``build``/``build-B``: a generated CMake/ninja build directory (~1 GB, fixed
  seed) and its "next commit" variant. Machine code is taken from the torch
  wheel's libtorch_cpu.so (so the ``torch`` corpus is built first) and every
  object, library and executable passes it through its own byte permutation:
  that keeps zstd's ratio of real code (~3.5x) but makes files that are not
  meant to share bytes share none. Static libraries do contain their object
  files verbatim, as real ``ar`` archives do.
- ``scale``/``scale-B`` (only with ``--scale N``; benchmarks/scale.py): N such
  builds side by side (``part00``, ``part01``, ...; 0.93-1 GB each), each from its own
  seed, so no two share content; ``part00`` is ``build`` itself. ``scale-B``
  gives every part the same kind of next-commit changes as ``build-B``.

Wheels are unpacked with the modes and (UTC) times recorded in the zip;
generated files get fixed times, so every corpus is the same bytes, modes and
mtimes on any machine. Wheels come from /opt/wheels or ./wheels under DIR when
present, else from PyPI through ``pip download`` (pure-Python ones with
``pip download --no-deps --only-binary=:all: PKG==VER``).
"""

from __future__ import annotations

import argparse
import calendar
import os
import random
import re
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64")
TORCH_VERSION = "2.13.0+cpu"
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_DIRS = (Path("/opt/wheels"),)


def default_dir() -> Path:
    """Where corpora are cached: `$CAS_BENCH_DIR`, else `~/.cache/cas-bench`."""
    env = os.environ.get("CAS_BENCH_DIR")
    return Path(env) if env else Path.home() / ".cache" / "cas-bench"


PAIRS = {"numpy": ("2.4.0", "2.4.1"), "scipy": ("1.15.0", "1.15.3")}
PURE_SETS: dict[str, dict[str, tuple[str, str]]] = {
    "pywheels": {
        "botocore": ("1.43.126", "1.43.127"),
        "sympy": ("1.13.2", "1.13.3"),
        "django": ("5.2.18", "5.2.19"),
        "plotly": ("5.24.0", "5.24.1"),
        "babel": ("2.16.0", "2.17.0"),
        "setuptools": ("75.8.0", "75.8.1"),
        "pip": ("25.0", "25.0.1"),
        "google-api-python-client": ("2.190.0", "2.191.0"),
    }
}
"""Pairs of several pure-Python wheels unpacked into one tree: package -> (A, B) version."""
BUILD_SEED = 20251128
BASE_MTIME = 1_735_689_600  # 2025-01-01T00:00:00Z
NAMES = ("torch", "numpy", "scipy", "build", "pywheels")


def log(message: str) -> None:
    print(f"[corpus] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- wheels


def find_or_download(cache: Path, name: str, version: str) -> Path:
    """A wheel for cp311 manylinux x86_64, from a local directory or PyPI."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{version}-cp311-"
    for d in (*WHEEL_DIRS, wheels):
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.name.startswith(stem) and f.name.endswith(".whl") and "x86_64" in f.name:
                    return f
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "-d",
        str(wheels),
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    if name == "torch":
        cmd += [
            "--index-url",
            "https://download.pytorch.org/whl/cpu",
            "--extra-index-url",
            "https://pypi.org/simple",
        ]
    cmd.append(f"{name}=={version}")
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)
    for f in sorted(wheels.iterdir()):
        if f.name.startswith(stem) and f.name.endswith(".whl"):
            return f
    raise SystemExit(f"pip downloaded no wheel for {name}=={version}")


def _dist_name(name: str) -> str:
    """A distribution name as wheel file names spell it (PEP 427/503 normalization)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def find_or_download_pure(cache: Path, name: str, version: str) -> Path:
    """A pure-Python wheel (`py3-none-any`), from a local directory or PyPI."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)

    def found() -> Path | None:
        for d in (*WHEEL_DIRS, wheels):
            if d.is_dir():
                for f in sorted(d.iterdir()):
                    parts = f.name.split("-")
                    if (
                        f.name.endswith("-none-any.whl")
                        and len(parts) == 5
                        and _dist_name(parts[0]) == _dist_name(name)
                        and parts[1] == version
                    ):
                        return f
        return None

    wheel = found()
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["-d", str(wheels), f"{name}=={version}"]
        log(" ".join(cmd))
        subprocess.run(cmd, check=True)
        wheel = found()
    if wheel is None:
        raise SystemExit(f"pip downloaded no pure-Python wheel for {name}=={version}")
    return wheel


def unpack_wheel(wheel: Path, dest: Path) -> None:
    """Unzip with the recorded modes and UTC mtimes (zip has no symlinks here)."""
    unpack_wheels([wheel], dest)


def unpack_wheels(wheels: list[Path], dest: Path) -> None:
    """Unzip several wheels side by side into one directory (no path may repeat)."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dirs: set[Path] = set()
    files: set[Path] = set()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                target = tmp / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    dirs.add(target)
                    continue
                if target in files:
                    raise SystemExit(f"{wheel.name}: {info.filename} is already in {dest.name}")
                files.add(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                mode = (info.external_attr >> 16) & 0o7777 or 0o644
                os.chmod(target, mode)
                mtime = calendar.timegm((*info.date_time, 0, 0, 0))
                os.utime(target, (mtime, mtime))
                p = target.parent
                while p != tmp:
                    dirs.add(p)
                    p = p.parent
    for d in sorted(dirs, key=lambda p: -len(p.parts)):
        os.utime(d, (BASE_MTIME, BASE_MTIME))
    os.utime(tmp, (BASE_MTIME, BASE_MTIME))
    tmp.rename(dest)


def build_torch(cache: Path) -> Path:
    dest = cache / "torch"
    if not dest.is_dir():
        wheel = find_or_download(cache, "torch", TORCH_VERSION)
        log(f"unpacking {wheel.name} -> {dest}")
        unpack_wheel(wheel, dest)
    return dest


def build_pair(cache: Path, name: str) -> tuple[Path, Path]:
    out = []
    for suffix, version in zip("AB", PAIRS[name], strict=True):
        dest = cache / f"{name}-{suffix}"
        if not dest.is_dir():
            wheel = find_or_download(cache, name, version)
            log(f"unpacking {wheel.name} -> {dest}")
            unpack_wheel(wheel, dest)
        out.append(dest)
    return out[0], out[1]


def build_pure_set(cache: Path, name: str) -> tuple[Path, Path]:
    """`NAME-A` and `NAME-B`: every wheel of the set at its A (B) version in one tree."""
    out = []
    for side in range(2):
        dest = cache / f"{name}-{'AB'[side]}"
        if not dest.is_dir():
            wheels = [
                find_or_download_pure(cache, pkg, versions[side])
                for pkg, versions in PURE_SETS[name].items()
            ]
            log(f"unpacking {', '.join(w.name for w in wheels)} -> {dest}")
            unpack_wheels(wheels, dest)
        out.append(dest)
    return out[0], out[1]


# ---------------------------------------------------------------- generated build tree

_SYLLABLES = [c + v for c in "bcdfgklmnprstvz" for v in "aeiou"] + ["an", "el", "in", "or", "us"]


def _vocab(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 5))) for _ in range(n)]


def _perm(rng: random.Random) -> bytes:
    table = list(range(256))
    rng.shuffle(table)
    return bytes(table)


@dataclass
class BuildScale:
    """Sizes of a generated build tree."""

    modules: int = 48
    objs_per_module: tuple[int, int] = (40, 250)
    obj_median: int = 20_000
    obj_sigma: float = 1.0
    obj_max: int = 3 << 20
    exe_sizes: tuple[int, ...] = (32 << 20, 64 << 20, 128 << 20, 256 << 20)


SMOKE_SCALE = BuildScale(
    modules=3,
    objs_per_module=(4, 12),
    obj_median=6_000,
    obj_max=200_000,
    exe_sizes=(1 << 20, 3 << 20),
)


@dataclass
class Edit:
    """Replace `delete` bytes at `offset` (fraction of the file) with `insert` new bytes."""

    offset: float
    delete: int
    insert: int
    seed: int


@dataclass
class Spec:
    """One file of the generated tree, described well enough to write it."""

    path: str
    kind: str  # obj, dep, ar, so, exe, text, bytes, link, emptydir
    seed: int = 0
    size: int = 0
    mode: int = 0o644
    mtime: int = BASE_MTIME
    members: list[str] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    data: bytes = b""
    target: str = ""


class BuildGenerator:
    """Plans and writes a CMake/ninja-like build tree; `mutate` gives the next commit."""

    def __init__(self, pool: bytes, scale: BuildScale, seed: int = BUILD_SEED) -> None:
        self.pool = pool
        self.scale = scale
        self._memo: dict[str, bytes] = {}
        self.seed = seed
        rng = random.Random(seed)
        self.vocab = [w.encode() for w in _vocab(rng, 3000)]
        self.headers = [f"/usr/include/c++/12/{w}" for w in _vocab(rng, 60)] + [
            f"/src/proj/include/{a}/{b}.h"
            for a, b in zip(_vocab(rng, 400), _vocab(rng, 400), strict=True)
        ]

    # -- planning

    def plan(self) -> dict[str, Spec]:
        s = self.scale
        rng = random.Random(self.seed)
        names = _vocab(rng, s.modules + 8)
        specs: dict[str, Spec] = {}
        objects: dict[str, list[str]] = {}
        for m in range(s.modules):
            mod = names[m]
            objects[mod] = []
            n = rng.randint(*s.objs_per_module)
            subdirs = [""] + [f"{w}/" for w in _vocab(rng, rng.randint(0, 6))]
            for _ in range(n):
                src = f"{rng.choice(subdirs)}{'_'.join(_vocab(rng, 2))}.cpp"
                obj = f"src/{mod}/CMakeFiles/{mod}.dir/{src}.o"
                if obj in specs:
                    continue
                size = int(
                    min(s.obj_max, max(600, rng.lognormvariate(0, s.obj_sigma) * s.obj_median))
                )
                specs[obj] = Spec(obj, "obj", rng.getrandbits(62), size)
                specs[obj + ".d"] = Spec(
                    obj + ".d", "dep", rng.getrandbits(62), rng.randint(8, 120)
                )
                objects[mod].append(obj)
            base = f"src/{mod}"
            specs[f"{base}/cmake_install.cmake"] = Spec(
                f"{base}/cmake_install.cmake", "text", rng.getrandbits(62), rng.randint(300, 1500)
            )
            specs[f"{base}/CTestTestfile.cmake"] = Spec(
                f"{base}/CTestTestfile.cmake", "text", rng.getrandbits(62), rng.randint(100, 400)
            )
            d = f"{base}/CMakeFiles/{mod}.dir"
            specs[f"{d}/compiler_depend.ts"] = Spec(
                f"{d}/compiler_depend.ts",
                "bytes",
                data=b"# CMAKE generated file: DO NOT EDIT!\n# Timestamp file for compiler "
                b"generated dependencies management for " + mod.encode() + b".\n",
            )
            specs[f"{d}/depend.make"] = Spec(f"{d}/depend.make", "bytes", data=b"")
            if m % 2 == 0:
                lib = f"lib/lib{mod}.a"
                specs[lib] = Spec(lib, "ar", members=list(objects[mod]))
            else:
                so = f"lib/lib{mod}.so.1.2.3"
                total = sum(specs[o].size for o in objects[mod])
                specs[so] = Spec(so, "so", rng.getrandbits(62), int(total * 0.7), 0o755)
                specs[f"lib/lib{mod}.so.1"] = Spec(
                    f"lib/lib{mod}.so.1", "link", target=f"lib{mod}.so.1.2.3"
                )
                specs[f"lib/lib{mod}.so"] = Spec(
                    f"lib/lib{mod}.so", "link", target=f"lib{mod}.so.1"
                )
        for i, size in enumerate(s.exe_sizes):
            exe = f"bin/{names[s.modules + i]}"
            specs[exe] = Spec(exe, "exe", rng.getrandbits(62), size, 0o755)
        for path, lo, hi in (
            ("CMakeCache.txt", 20_000, 60_000),
            ("cmake_install.cmake", 1_000, 3_000),
            ("CMakeFiles/CMakeConfigureLog.yaml", 50_000, 200_000),
            ("CMakeFiles/3.28.3/CMakeCXXCompiler.cmake", 3_000, 6_000),
            ("CMakeFiles/3.28.3/CMakeSystem.cmake", 300, 600),
            ("CMakeFiles/cmake.check_cache", 80, 90),
            ("CMakeFiles/rules.ninja", 5_000, 20_000),
        ):
            specs[path] = Spec(path, "text", rng.getrandbits(62), rng.randint(lo, hi))
        specs["CMakeFiles/3.28.3/CompilerIdCXX/a.out"] = Spec(
            "CMakeFiles/3.28.3/CompilerIdCXX/a.out", "so", rng.getrandbits(62), 16_000, 0o755
        )
        specs["Testing/Temporary"] = Spec("Testing/Temporary", "emptydir")
        specs["Testing/Temporary/LastTest.log.tmp"] = Spec(
            "Testing/Temporary/LastTest.log.tmp", "bytes", data=b"", mode=0o600
        )
        specs["docs/r\u00e9sum\u00e9 \u00fcber.txt"] = Spec(
            "docs/r\u00e9sum\u00e9 \u00fcber.txt", "text", rng.getrandbits(62), 700
        )
        specs["compile_commands"] = Spec("compile_commands.json", "derived")
        specs["build.ninja"] = Spec("build.ninja", "derived")
        specs[".ninja_log"] = Spec(".ninja_log", "derived")
        specs["latest"] = Spec("latest", "link", target="bin")
        specs["dangling"] = Spec("dangling", "link", target="does/not/exist")
        return specs

    def mutate(self, specs: dict[str, Spec]) -> dict[str, Spec]:
        """The next commit: ~3% of objects changed, some added and removed, binaries relinked."""
        rng = random.Random(self.seed + 1)
        new = {
            k: replace(v, members=list(v.members), edits=list(v.edits)) for k, v in specs.items()
        }
        later = BASE_MTIME + 86_400
        objs = [k for k, v in new.items() if v.kind == "obj"]
        changed = rng.sample(objs, max(1, len(objs) * 3 // 100))
        changed_mods = set()
        for obj in changed:
            sp = new[obj]
            sp.seed = rng.getrandbits(62)
            sp.size = max(600, int(sp.size * rng.uniform(0.9, 1.15)))
            sp.mtime = later
            dep = new[obj + ".d"]
            dep.size += rng.randint(-2, 3)
            dep.mtime = later
            changed_mods.add(obj.split("/")[1])
        # removed: a slice of one module's objects
        victims = [o for o in objs if o not in changed]
        removed = rng.sample(victims, max(1, len(objs) // 300))
        for obj in removed:
            del new[obj], new[obj + ".d"]
            changed_mods.add(obj.split("/")[1])
        # added: a new source file in a few modules
        mods = sorted({o.split("/")[1] for o in objs})
        for mod in rng.sample(mods, max(1, len(mods) // 8)):
            for _ in range(rng.randint(1, 4)):
                obj = f"src/{mod}/CMakeFiles/{mod}.dir/{'_'.join(_vocab(rng, 2))}_new.cpp.o"
                new[obj] = Spec(
                    obj,
                    "obj",
                    rng.getrandbits(62),
                    int(rng.lognormvariate(0, 0.7) * self.scale.obj_median),
                    mtime=later,
                )
                new[obj + ".d"] = Spec(
                    obj + ".d", "dep", rng.getrandbits(62), rng.randint(8, 120), mtime=later
                )
            changed_mods.add(mod)
        for sp in new.values():
            if sp.kind == "ar":
                mod = sp.path[len("lib/lib") : -2]
                if mod in changed_mods:
                    sp.members = sorted(
                        o for o, v in new.items() if v.kind == "obj" and o.startswith(f"src/{mod}/")
                    )
                    sp.mtime = later
            elif sp.kind == "so" and sp.path.startswith("lib/"):
                mod = sp.path[len("lib/lib") : -len(".so.1.2.3")]
                if mod in changed_mods:
                    sp.edits += [
                        Edit(
                            rng.random(),
                            rng.randint(4_000, 64_000),
                            rng.randint(4_000, 64_000),
                            rng.getrandbits(62),
                        )
                        for _ in range(3)
                    ]
                    sp.mtime = later
        exes = sorted((v for v in new.values() if v.kind == "exe"), key=lambda v: -v.size)
        big = exes[0]
        big.edits.append(Edit(1000 / big.size, 0, 16, rng.getrandbits(62)))  # shifts everything
        big.edits += [
            Edit(
                rng.random(),
                rng.randint(1_000, 64_000),
                rng.randint(1_000, 64_000),
                rng.getrandbits(62),
            )
            for _ in range(10)
        ]
        big.mtime = later
        if len(exes) > 1:
            exes[1].edits += [
                Edit(rng.random(), n, n, rng.getrandbits(62))
                for n in (rng.randint(1_000, 32_000) for _ in range(5))
            ]
            exes[1].mtime = later
        # a new tiny file and a removed CMake file
        new["src/generated_version.h"] = Spec(
            "src/generated_version.h", "bytes", data=b'#define PROJ_VERSION "1.2.4"\n', mtime=later
        )
        new.pop("CMakeFiles/3.28.3/CMakeSystem.cmake", None)
        for key in ("compile_commands", "build.ninja", ".ninja_log"):
            new[key].mtime = later
        new[".ninja_log"].seed = 1  # append this commit's lines
        return new

    # -- content

    def _text(self, rng: random.Random, size: int, sep: bytes = b" ") -> bytes:
        out = sep.join(rng.choices(self.vocab, k=size // 7 + 1))
        lines = bytearray(out[:size])
        for i in range(60, len(lines), rng.randint(50, 90)):
            lines[i] = 10
        return bytes(lines)

    def _code(self, rng: random.Random, size: int, perm: bytes) -> bytes:
        """`size` bytes of permuted machine code from the pool, contiguous with wrap-around."""
        pool = self.pool
        pieces = []
        pos = rng.randrange(len(pool))
        left = size
        while left > 0:
            take = min(left, len(pool) - pos, 8 << 20)
            pieces.append(pool[pos : pos + take].translate(perm))
            left -= take
            pos = (pos + take) % len(pool)
        return b"".join(pieces)

    def content(self, sp: Spec, specs: dict[str, Spec]) -> bytes:
        rng = random.Random(sp.seed)
        if sp.kind == "obj":
            perm = _perm(rng)
            header = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x01\x00\x3e\x00" + bytes(44)
            code = self._code(rng, int(sp.size * 0.70), perm)
            rand = rng.randbytes(int(sp.size * 0.06))
            strtab = self._text(
                rng, max(0, sp.size - len(header) - len(code) - len(rand)), b"\0_ZN"
            )
            return header + code + strtab + rand
        if sp.kind == "dep":
            n = sp.size
            src = sp.path.removesuffix(".o.d").split(".dir/", 1)[1]
            hs = rng.sample(self.headers, min(n, len(self.headers)))
            return (f"{sp.path[:-2]}: /src/proj/{src} \\\n  " + " \\\n  ".join(hs) + "\n").encode()
        if sp.kind == "ar":
            out = [b"!<arch>\n"]
            for m in sp.members:
                data = self._memo.pop(m, None) or self.content(specs[m], specs)
                name = (os.path.basename(m)[:15] + "/").ljust(16).encode()
                out.append(name + f"{0:<12}{0:<6}{0:<6}{644:<8}{len(data):<10}`\n".encode())
                out.append(data + (b"\n" if len(data) % 2 else b""))
            return b"".join(out)
        if sp.kind in ("so", "exe"):
            perm = _perm(rng)
            buf = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
            buf += self._code(rng, int(sp.size * 0.97) - 64, perm)
            buf += rng.randbytes(sp.size - len(buf))
            for e in sorted(sp.edits, key=lambda e: -e.offset):
                er = random.Random(e.seed)
                at = max(64, int(e.offset * len(buf)))
                buf[at : at + e.delete] = self._code(er, e.insert, _perm(er))
            return bytes(buf)
        if sp.kind == "text":
            return self._text(rng, sp.size)
        if sp.kind == "bytes":
            return sp.data
        if sp.kind == "derived":
            return self._derived(sp, specs)
        raise AssertionError(sp.kind)

    def _derived(self, sp: Spec, specs: dict[str, Spec]) -> bytes:
        objs = sorted(k for k, v in specs.items() if v.kind == "obj")
        if sp.path == "compile_commands.json":
            items = [
                '  {\n    "directory": "/src/proj/build",\n    "command": "/usr/bin/c++ '
                f"-DPROJ_EXPORTS -I/src/proj/include -O2 -g -fPIC -std=gnu++17 -o {o} -c "
                f'/src/proj/{o.split(".dir/", 1)[1][:-2]}",\n    "file": "/src/proj/'
                f'{o.split(".dir/", 1)[1][:-2]}",\n    "output": "{o}"\n  }}'
                for o in objs
            ]
            return ("[\n" + ",\n".join(items) + "\n]\n").encode()
        if sp.path == "build.ninja":
            lines = ["# CMAKE generated file: DO NOT EDIT!\nninja_required_version = 1.5\n"]
            for o in objs:
                src = o.split(".dir/", 1)[1][:-2]
                mod = o.split("/")[1]
                lines.append(
                    f"build {o}: CXX_COMPILER__{mod}_unscanned_Release /src/proj/{src} || "
                    f"cmake_object_order_depends_target_{mod}\n  DEFINES = -DPROJ_EXPORTS\n"
                    f"  DEP_FILE = {o}.d\n  FLAGS = -O2 -g -fPIC -std=gnu++17\n"
                    f"  OBJECT_DIR = src/{mod}/CMakeFiles/{mod}.dir\n"
                )
            return "".join(lines).encode()
        if sp.path == ".ninja_log":
            lines = ["# ninja log v5\n"]
            t = 0
            for i, o in enumerate(objs):
                t += 37 + i % 91
                lines.append(f"{t}\t{t + 900 + i % 500}\t0\t{o}\t{i * 2654435761 % (1 << 64):x}\n")
            if sp.seed == 1:
                for o in objs[::30]:
                    lines.append(f"{t}\t{t + 1234}\t0\t{o}\t{zlib.crc32(o.encode()):x}\n")
            return "".join(lines).encode()
        raise AssertionError(sp.path)

    # -- writing

    def write(self, specs: dict[str, Spec], dest: Path) -> None:
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for sp in sorted(specs.values(), key=lambda s: (s.kind == "ar", s.path)):
            target = tmp / sp.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if sp.kind == "emptydir":
                target.mkdir(exist_ok=True)
                continue
            if sp.kind == "link":
                os.symlink(sp.target, target)
                os.utime(target, (sp.mtime, sp.mtime), follow_symlinks=False)
                continue
            data = self.content(sp, specs)
            if sp.kind == "obj":
                self._memo[sp.path] = data  # the static library that holds it comes later
            target.write_bytes(data)
            os.chmod(target, sp.mode)
            os.utime(target, (sp.mtime, sp.mtime))
        all_dirs = [p for p in tmp.rglob("*") if p.is_dir() and not p.is_symlink()]
        for d in sorted(all_dirs, key=lambda p: -len(p.parts)):
            os.utime(d, (BASE_MTIME, BASE_MTIME))
        os.utime(tmp, (BASE_MTIME, BASE_MTIME))
        self._memo.clear()
        tmp.rename(dest)


def torch_pool(cache: Path) -> bytes:
    """libtorch_cpu.so's bytes: the machine code the generated binaries are made of."""
    lib = build_torch(cache) / "torch" / "lib" / "libtorch_cpu.so"
    return lib.read_bytes()


def synthetic_pool(size: int, seed: int = 7) -> bytes:
    """Binary-looking bytes (repeated short tokens plus noise) for the smoke corpus."""
    rng = random.Random(seed)
    tokens = [rng.randbytes(rng.randint(2, 24)) for _ in range(4096)]
    parts = []
    n = 0
    while n < size:
        piece = b"".join(rng.choices(tokens, k=2000)) + rng.randbytes(800)
        parts.append(piece)
        n += len(piece)
    return b"".join(parts)[:size]


def build_build(
    cache: Path, pool_fn: Callable[[], bytes], scale: BuildScale, name: str = "build"
) -> tuple[Path, Path]:
    a, b = cache / name, cache / f"{name}-B"
    if a.is_dir() and b.is_dir():
        return a, b
    t0 = time.monotonic()
    gen = BuildGenerator(pool_fn(), scale)
    specs = gen.plan()
    if not a.is_dir():
        log(f"generating {a}")
        gen.write(specs, a)
    if not b.is_dir():
        log(f"generating {b}")
        gen.write(gen.mutate(specs), b)
    log(f"generated {name} pair in {time.monotonic() - t0:.1f}s")
    return a, b


def part_seed(i: int) -> int:
    """The seed of sub-build `i` of a scaled tree (0: `build`'s own).

    Spaced so that no part's `plan` seed equals another's `mutate` seed (seed + 1).
    """
    return BUILD_SEED + 1009 * i


def build_scaled(
    cache: Path, pool_fn: Callable[[], bytes], scale: BuildScale, parts: int, name: str = "scale"
) -> tuple[Path, Path]:
    """`NAME` and `NAME-B`: `parts` independent generated builds side by side, and the next commit.

    Parts are written one at a time into `NAME.partial` (and `NAME-B.partial`),
    so an interrupted run resumes with the next part.
    """
    a, b = cache / name, cache / f"{name}-B"
    for root in (a, b, cache / f"{name}.partial", cache / f"{name}-B.partial"):
        found = len(list(root.glob("part[0-9][0-9]"))) if root.is_dir() else parts
        if found > parts or (found < parts and not root.name.endswith(".partial")):
            raise SystemExit(f"{root} holds {found} parts, not {parts}: remove it first")
    if a.is_dir() and b.is_dir():
        return a, b
    t0 = time.monotonic()
    pool = pool_fn()
    for root, next_commit in ((a, False), (b, True)):
        if root.is_dir():
            continue
        tmp = root.with_name(root.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        for i in range(parts):
            dest = tmp / f"part{i:02d}"
            if dest.is_dir():
                continue  # written by an earlier, interrupted run
            log(f"generating {root}/{dest.name}")
            gen = BuildGenerator(pool, scale, part_seed(i))
            specs = gen.plan()
            gen.write(gen.mutate(specs) if next_commit else specs, dest)
        os.utime(tmp, (BASE_MTIME, BASE_MTIME))
        tmp.rename(root)
    log(f"generated {name} pair ({parts} parts) in {time.monotonic() - t0:.1f}s")
    return a, b


def build_smoke(dest_root: Path) -> tuple[Path, Path]:
    """A few-MB generated pair (no downloads) for `compare.py --smoke`."""
    return build_build(dest_root, lambda: synthetic_pool(8 << 20), SMOKE_SCALE, "smoke")


def tree_bytes(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            files += 1
            size += st.st_size
    return files, size


def build(cache: Path, only: Iterable[str]) -> None:
    for name in only:
        if name == "torch":
            paths: tuple[Path, ...] = (build_torch(cache),)
        elif name in PAIRS:
            paths = build_pair(cache, name)
        elif name in PURE_SETS:
            paths = build_pure_set(cache, name)
        elif name == "build":
            paths = build_build(cache, lambda: torch_pool(cache), BuildScale())
        else:
            raise SystemExit(f"unknown corpus {name!r}; choose from {', '.join(NAMES)}")
        for p in paths:
            files, size = tree_bytes(p)
            log(f"{p}: {files} files, {size / 1e6:.1f} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dir",
        type=Path,
        default=default_dir(),
        help="corpus cache (default: $CAS_BENCH_DIR or ~/.cache/cas-bench)",
    )
    ap.add_argument(
        "--only", action="append", choices=NAMES, help="build only this corpus (repeatable)"
    )
    ap.add_argument(
        "--scale",
        type=int,
        metavar="N",
        help="build only scale/scale-B: N generated builds side by side (~1 GB each)",
    )
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    cache = args.dir.resolve()
    if args.only or not args.scale:
        build(cache, args.only or NAMES)
    if args.scale:
        for p in build_scaled(cache, lambda: torch_pool(cache), BuildScale(), args.scale):
            files, size = tree_bytes(p)
            log(f"{p}: {files} files, {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
