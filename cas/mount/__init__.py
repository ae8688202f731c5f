"""`cas mount`: a lazy, verified, read-only FUSE view of a manifest.

Listings and attributes come from trees alone; file contents are fetched by
chunk on first read, through the repository's verified read path (and the
shared LMDB chunk cache), so a test job can start before a download would
have ended. Modules:

- `lru`: a byte-capped least-recently-used map (decoded trees, decoded chunks);
- `trees`: decoded trees by id, fetched once, kept within a byte cap;
- `nodes`: the inode table the kernel refers to (lookup counts, forget);
- `reader`: a file's byte ranges from its chunks, with readahead;
- `walkahead`: a walk of the tree recognised from the opens, its next files fetched ahead;
- `fs`: the pyfuse3 operations;
- `session`: mounting, serving until unmounted or signalled, unmounting.
"""
