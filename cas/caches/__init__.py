"""What a machine remembers between runs, in LMDB (never trusted without a check).

- `files`: `FilesCache` (unchanged files skip reading), the last put per
  source, the put journal, unsettled refs, known-present objects.
- `dirs`: `DirsCache` (unchanged directories reuse their trees).
"""

from cas.lazyexports import lazy_exports

__getattr__ = lazy_exports(__name__, {"FilesCache": "files", "DirsCache": "dirs"})
