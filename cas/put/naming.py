"""What a put builds on and what it is called: its parents, and its create-only ref.

A put reuses what its parents' indexes locate: `--parent`, else the
newest ref beside `--ref` and the last put of the same source here. Its
ref is create-only and checked before anything is uploaded, with one
exception kept for retried CI jobs: a put killed after it created its ref
(before it finished) left the ref noted as unsettled for its source in
the files cache, and the re-run of the same source then completes that
manifest instead of failing on a name that is its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from cas.caches.files import FilesCache, LastPuts, UnsettledRefs
from cas.errors import AlreadyExists, ObjectNotFound
from cas.ids import ObjectId
from cas.objects import Manifest
from cas.repo import Repository

log = logging.getLogger("cas.put.naming")


class PutNaming:
    """The parents and the ref of one put of `source`."""

    def __init__(
        self,
        repo: Repository,
        source: str,
        ref: str | None,
        parent: str | None,
        files_cache: FilesCache | None,
    ) -> None:
        self.repo = repo
        self.source = source
        self.ref = ref
        self.parent = parent
        self.files_cache = files_cache
        self.completing: ObjectId | None = None
        """The manifest the ref already names when this put re-runs an unfinished one."""

    async def check_ref(self) -> None:
        """Refuse a taken ref before anything is uploaded, unless it is this source's own."""
        if self.ref is None:
            return
        try:
            target = await self.repo.store.read_ref(self.ref)
        except ObjectNotFound:
            return
        unsettled = None
        if self.files_cache is not None:
            unsettled = await asyncio.to_thread(
                UnsettledRefs(self.files_cache).get, self.source, self.ref
            )
        if unsettled != target:
            raise AlreadyExists(f"ref {self.ref!r} already exists; nothing was uploaded")
        log.info("ref %s names an unfinished put of this source: completing it", self.ref)
        self.completing = target

    async def parents(self) -> list[ObjectId]:
        """Manifests to reuse: `--parent`, else the newest ref nearby and the last put."""
        if self.parent is not None:
            try:
                return [await self.repo.resolve(self.parent)]
            except ObjectNotFound as exc:
                raise ObjectNotFound(f"parent: {exc}") from None
        found: list[ObjectId] = []
        ref = self.ref
        prefix = ref.rsplit("/", 1)[0] + "/" if ref and "/" in ref else ""
        refs = [r async for r in self.repo.store.list_refs(prefix)]
        if refs:
            found.append(max(refs, key=lambda r: (r.mtime, r.name)).target)
        if self.files_cache is not None:
            last = await asyncio.to_thread(LastPuts(self.files_cache).get, self.source)
            if last is not None and last not in found:
                found.append(last)
        return found

    async def completed(self, made: Manifest) -> tuple[ObjectId, Manifest] | None:
        """The unfinished put's manifest, if it describes what this put made (but its time)."""
        if self.completing is None:
            return None
        try:
            earlier = await self.repo.get_manifest(self.completing)
        except ObjectNotFound:
            return None
        same = dataclasses.replace(earlier, created=made.created, tool=made.tool)
        return (self.completing, earlier) if same == made else None

    async def name(self, manifest_id: ObjectId) -> AlreadyExists | None:
        """Create the ref; the error to raise once settled if another manifest holds it."""
        if self.ref is None:
            return None
        if self.files_cache is not None:
            # Before the ref: a re-run after a kill from here on completes this manifest.
            unsettled = UnsettledRefs(self.files_cache)
            await asyncio.to_thread(unsettled.note, self.source, self.ref, manifest_id)
        if self.completing == manifest_id:
            return None
        try:
            await self.repo.store.create_ref(self.ref, manifest_id)
        except AlreadyExists:
            # A create the store ran twice (replayed below the retry layer) answers
            # "exists" the second time: a ref naming this very manifest is ours.
            if await self.repo.store.read_ref(self.ref) != manifest_id:
                return AlreadyExists(
                    f"ref {self.ref!r} already exists; manifest {manifest_id} was stored "
                    "but not named"
                )
        return None

    async def ref_exists(self) -> bool:
        """Whether the ref is (still) there."""
        if self.ref is None:
            return False
        try:
            await self.repo.store.read_ref(self.ref)
        except ObjectNotFound:
            return False
        return True

    async def finished(self, manifest_id: ObjectId) -> None:
        """The put completed: the next put of this source builds on it; nothing is unsettled."""
        if self.files_cache is None:
            return
        await asyncio.to_thread(LastPuts(self.files_cache).remember, self.source, manifest_id)
        if self.ref is not None:
            await asyncio.to_thread(UnsettledRefs(self.files_cache).clear, self.source, self.ref)
