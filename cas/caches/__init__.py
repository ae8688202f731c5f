"""What a machine remembers between runs, in LMDB (never trusted without a check).

- `files`: `FilesCache` (unchanged files skip reading; its LMDB environment
  also holds the other tables): the last put per source (`LastPuts`), the
  put journal (`PutJournal`), refs a killed put created (`UnsettledRefs`).
- `dirs`: `DirsCache` (unchanged directories reuse their trees).
- `chunks`: `ChunkCache`, the size-capped LRU of stored frames shared by
  get, mount and every process of the machine; `lmdbenv`: opening LMDB.
"""

from cas.lazyexports import lazy_exports

__getattr__ = lazy_exports(
    __name__, {"ChunkCache": "chunks", "FilesCache": "files", "DirsCache": "dirs"}
)
