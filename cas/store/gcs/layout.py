"""A GCS store's layout: the marker object, checked once per store before any call.

`PREFIX/cas-store.json` names the layout (in its metadata, or its content
when written by hand). A format 1 store (chunks and trees under their own
namespaces) and unknown layouts are refused in one line; the marker is
created before the first write, create-only, so two writers racing to
create it are both right.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

from cas.errors import UsageError
from cas.store.gcs.errors import GcsCall, create_call, list_call, parse_answer, read_call
from cas.store.gcs.http import BodyTooLarge, GcsHttp
from cas.store.gcs.location import GcsLocation

LAYOUT: Final = "cas.gcs-store/2"
_LAYOUT_KEY: Final = "cas-layout"
_LAYOUT_FIELDS: Final = "items(name,metadata),prefixes,nextPageToken"
_FORMAT_1_NAMESPACES: Final = ("chunk", "tree")
_MARKER_MAX_BYTES: Final = 4096


class GcsLayout:
    """The layout check and marker of one store (`location`), through `http`."""

    def __init__(self, http: GcsHttp, location: GcsLocation) -> None:
        self._http = http
        self.location = location
        self._layout_checked = False
        self._marker_missing = False
        self._layout_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    async def _download_marker(self, call: GcsCall) -> bytes:
        answer = await self._http.send(
            "GET",
            self._http.object_url(self.location.marker_name),
            call,
            params={"alt": "media"},
            max_body=_MARKER_MAX_BYTES,
        )
        return answer.body

    async def ready(self, *, writing: bool = False) -> None:
        """Check the layout once per store; before the first write, make sure the marker exists."""
        if self._layout_checked and not (writing and self._marker_missing):
            return
        async with self._layout_lock():
            if not self._layout_checked:
                await self._check_layout()
            if writing and self._marker_missing:
                await self._write_marker()

    def _layout_lock(self) -> asyncio.Lock:
        """One lock per event loop (a lock cannot move between loops)."""
        loop = asyncio.get_running_loop()
        lock = self._layout_locks.get(loop)
        if lock is None:
            self._layout_locks = {k: v for k, v in self._layout_locks.items() if not k.is_closed()}
            lock = self._layout_locks[loop] = asyncio.Lock()
        return lock

    async def _top_level(self) -> tuple[dict[str, Any] | None, set[str]]:
        """The marker's listing entry (or None) and the sub-prefixes directly under the store."""
        call = list_call("store layout check")
        marker: dict[str, Any] | None = None
        prefixes: set[str] = set()
        params = {"prefix": self.location.base, "delimiter": "/", "fields": _LAYOUT_FIELDS}
        while True:
            answer = await self._http.send("GET", self._http.objects_url, call, params=params)
            page = parse_answer(answer.body, call, self.location)
            for item in page.get("items") or ():
                if isinstance(item, dict) and item.get("name") == self.location.marker_name:
                    marker = item
            prefixes.update(p for p in page.get("prefixes") or () if isinstance(p, str))
            token = page.get("nextPageToken")
            if not token:
                return marker, prefixes
            params = {**params, "pageToken": token}

    async def _check_layout(self) -> None:
        """Refuse a format 1 store or another layout; note whether the marker is still to write."""
        marker, prefixes = await self._top_level()
        base = self.location.base
        old = [f"{name}/" for name in _FORMAT_1_NAMESPACES if f"{base}{name}/" in prefixes]
        if old:
            raise UsageError(
                f"{self.location.url} is a format 1 store (objects under {' and '.join(old)}); "
                "this cas reads and writes format 2 only: put into a new store"
            )
        if marker is not None:
            layout = await self._marker_layout(marker)
            if layout != LAYOUT:
                raise UsageError(
                    f"{self.location.url}: unsupported store layout {layout!r} "
                    f"in {self.location.marker_name} (this cas reads {LAYOUT})"
                )
        self._marker_missing = marker is None
        self._layout_checked = True

    async def _marker_layout(self, item: dict[str, Any]) -> object:
        """The layout a marker names: from its metadata, else (written by hand) from its content."""
        metadata = item.get("metadata")
        if isinstance(metadata, dict) and _LAYOUT_KEY in metadata:
            return metadata[_LAYOUT_KEY]
        call = read_call(f"store marker {self.location.marker_name}")
        try:
            body = await self._download_marker(call)
            info = json.loads(body)
        except (BodyTooLarge, ValueError, RecursionError):
            return None
        return info.get("layout") if isinstance(info, dict) else None

    async def _write_marker(self) -> None:
        """Create the marker; another writer creating it first is just as good."""
        body = (json.dumps({"layout": LAYOUT}) + "\n").encode()
        await self._http.create(
            self.location.marker_name,
            body,
            create_call(f"store marker {self.location.marker_name}"),
            metadata={_LAYOUT_KEY: LAYOUT},
        )
        self._marker_missing = False
