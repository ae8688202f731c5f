"""A store opened from a URL, with this machine's chunk cache and local state.

What `cas` commands and library callers share, so both behave alike: the
store's layers (`open_store`), the chunk cache policy (in front of remote
stores and network mounts, not of a local disk, unless told), the files and
directories caches that let a put skip unchanged files and a get skip
identical ones, and what a put leaves out of its source (the store itself,
the cache directory).

    async with Session.open("gs://bucket/ci") as session:
        result = await session.put("build", PutOptions(ref="ci/main/42"))
        await session.get("ci/main/42", "out")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cas.caches.chunks import ChunkCache, configured_cache_size, default_cache_dir
from cas.repo import Repository
from cas.store.base import Store
from cas.store.registry import open_store

if TYPE_CHECKING:  # the engines load when used: `cas mount`, `cas ls` start faster without them
    from cas.get.downloader import GetOptions, GetStats
    from cas.progress import Progress
    from cas.put.uploader import PutOptions, PutResult

log = logging.getLogger("cas.session")


class Session:
    """One store, its repository, and the local state of this machine."""

    def __init__(
        self,
        store: Store,
        *,
        chunk_cache: bool | None = None,
        local_state: bool = True,
        cache_dir: Path | None = None,
        level: int = 3,
    ) -> None:
        """`chunk_cache`: None follows the store (remote: yes), True/False forces it.

        `local_state` off makes puts and gets read every file (no files or
        directories cache), as `--no-files-cache` does.
        """
        self.store = store
        self.cache_dir = cache_dir or default_cache_dir()
        self.local_state = local_state
        wanted = store.capabilities.remote if chunk_cache is None else chunk_cache
        self.chunk_cache = (
            ChunkCache(self.cache_dir) if wanted and configured_cache_size() > 0 else None
        )
        self.repo = Repository(store, self.chunk_cache, level=level)
        log.info(
            "store %s%s; chunk cache %s",
            store.url,
            " (created now)" if store.created else "",
            self.chunk_cache.path if self.chunk_cache is not None else "off",
        )

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        create: bool = False,
        chunk_cache: bool | None = None,
        local_state: bool = True,
        level: int = 3,
    ) -> Session:
        """The store at `url` (else `$CAS_STORE`, else the default local store)."""
        return cls(
            open_store(url, create=create),
            chunk_cache=chunk_cache,
            local_state=local_state,
            level=level,
        )

    async def put(
        self,
        source: str | os.PathLike[str],
        options: PutOptions | None = None,
        progress: Progress | None = None,
    ) -> PutResult:
        """Store a directory, skipping what this machine knows unchanged."""
        from cas.caches.files import FilesCache
        from cas.put.uploader import PutOptions, Uploader

        options = options or PutOptions()
        files_cache = None
        if self.local_state:
            files_cache = FilesCache(self.cache_dir, self.store.url, options.params)
            files_cache.prune()
        try:
            uploader = Uploader(
                self.repo, options, progress, files_cache=files_cache, skip_dirs=[self.cache_dir]
            )
            return await uploader.put(source)
        finally:
            if files_cache is not None:
                files_cache.close()

    async def get(
        self,
        name: str,
        dest: str | os.PathLike[str],
        options: GetOptions | None = None,
        progress: Progress | None = None,
    ) -> GetStats:
        """Restore the manifest `name` (id, ref or unique id prefix) into `dest`."""
        from cas.get.downloader import Downloader

        manifest_id = await self.repo.resolve(name)
        files_cache_dir = self.cache_dir if self.local_state else None
        downloader = Downloader(self.repo, progress, files_cache_dir=files_cache_dir)
        return await downloader.get(manifest_id, dest, options)

    async def aclose(self) -> None:
        """Close the store's connections and the chunk cache (its pending writes land)."""
        try:
            await self.store.aclose()
        finally:
            if self.chunk_cache is not None:
                self.chunk_cache.close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
