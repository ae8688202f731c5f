"""The get engine, and reading stored trees: a manifest in, a directory out.

- `downloader`: `Downloader`, `GetOptions`, `restore_manifest`.
- `survey`, `selection`: what the destination holds; what a partial get takes.
- `localchunks`: chunks local files already hold (destination, seeds).
- `fswrite`, `dirhandles`: the only code that writes into a destination.
- `browse`, `diff`: reading stored trees (walk, look up, stream); comparing manifests.
"""

from cas.lazyexports import lazy_exports

__getattr__ = lazy_exports(
    __name__,
    {
        "Downloader": "downloader",
        "GetOptions": "downloader",
        "GetStats": "downloader",
        "restore_manifest": "downloader",
    },
)
