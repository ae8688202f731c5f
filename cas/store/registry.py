"""Open a store from a URL: the scheme picks the backend.

`--store /path`, `--store file:///path` and the default (a directory in the
user's data dir) give a `LocalStore`; `http(s)://HOST:PORT` gives an
`HttpStore` talking to `cas serve`. Backends register a factory per
scheme; optional dependencies are imported only when their scheme is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import platformdirs

from cas.errors import UsageError
from cas.store.base import Store
from cas.store.limited import LimitedStore
from cas.store.retrying import RetryingStore, RetryPolicy

Factory = Callable[[str, bool], Store]
_FACTORIES: dict[str, Factory] = {}


def register(scheme: str, factory: Factory) -> None:
    """Make `open_store` understand `scheme://`."""
    _FACTORIES[scheme] = factory


def default_store_path() -> Path:
    """`$XDG_DATA_HOME/cas/store` (platformdirs resolves the XDG rules)."""
    return Path(platformdirs.user_data_dir("cas", appauthor=False)) / "store"


def resolve_store_url(url: str | None) -> str:
    """`--store`, else `$CAS_STORE`, else the default local directory."""
    if url:
        return url
    env = os.environ.get("CAS_STORE")
    if env:
        return env
    return str(default_store_path())


def _open_local(url: str, create: bool) -> Store:
    from cas.store.local import LocalStore

    if url.startswith("file:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"file URL must name a local path: {url!r}")
        path = unquote(parts.path)
        if not path:
            raise UsageError(f"file URL has no path: {url!r}")
    else:
        path = url
    return LocalStore(os.path.expanduser(path), create=create)


register("file", _open_local)


def wrap_remote(store: Store, policy: RetryPolicy | None = None) -> Store:
    """The layers every network backend gets: a cap on calls in flight, then retries.

    Retries sit outside the cap so a call waiting out its back-off does not
    hold a slot that another call could use.
    """
    return RetryingStore(LimitedStore(store), policy)


def _open_http(url: str, create: bool) -> Store:
    """A `cas serve` server; the bearer token comes from `CAS_TOKEN`."""
    from cas.store.http import HttpStore

    return wrap_remote(HttpStore(url, os.environ.get("CAS_TOKEN") or None))


register("http", _open_http)
register("https", _open_http)


def _open_gcs(url: str, create: bool) -> Store:
    """`gs://BUCKET/PREFIX`; buckets are made by their owners, never by `create`."""
    try:
        import google.auth  # noqa: F401 (only to report a missing extra clearly)
        import google_crc32c  # noqa: F401
    except ImportError:
        raise UsageError(
            f"{url}: gs:// stores need the gcs extra: pip install 'cas-store[gcs]'"
        ) from None
    from cas.store.gcs.store import GcsStore

    return wrap_remote(GcsStore.from_url(url))


register("gs", _open_gcs)


def open_store(url: str | None = None, *, create: bool = False) -> Store:
    """Open the store named by `url` (see `resolve_store_url`).

    `create=True` initialises an empty local store on first use (put does
    this); readers get `ObjectNotFound` for a store that does not exist.
    """
    url = resolve_store_url(url)
    scheme = urlsplit(url).scheme if "://" in url or url.startswith("file:") else "file"
    factory = _FACTORIES.get(scheme)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES))
        raise UsageError(f"unsupported store URL {url!r}: known schemes are {known}")
    return factory(url, create)
