"""The put engine: a source directory in, packs, trees, an index and a manifest out.

- `uploader`: `Uploader`, `PutOptions`, `put_directory`: parents, the stages
  wired together, the manifest, settling against collections.
- `treewalk`: the tree stage (one walker thread, trees built in post order).
- `files`: the file stage (batches of files described or read, chunks packed).
- `filecut`, `worker`: one file into chunks; worker processes for small files.
- `listing`: reading a source directory (deterministic order, excludes).
- `packwriter`: one put's pack writer (frames in, packs uploaded, locations out).
"""

from cas.lazyexports import lazy_exports

__getattr__ = lazy_exports(
    __name__,
    {
        "Uploader": "uploader",
        "PutOptions": "uploader",
        "PutResult": "uploader",
        "PutStats": "uploader",
        "put_directory": "uploader",
    },
)
