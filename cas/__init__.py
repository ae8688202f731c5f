"""cas: a content-addressed chunk store with delta transfer for build directories.

`cas.put.uploader.put_directory` stores a directory and returns a manifest id;
`cas.get.downloader.restore_manifest` restores one. Both go through a `Repository` over a
`Store` (`cas.store.open_store`).
"""

__version__ = "0.1.0"
