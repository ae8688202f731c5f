"""Stores: where objects live. One interface (`Store`), one backend per module."""

from cas.store.base import Capabilities, Kind, ObjectInfo, RefInfo, Store, validate_ref_name
from cas.store.local import LocalStore
from cas.store.registry import default_store_path, open_store, register, resolve_store_url

__all__ = [
    "Capabilities",
    "Kind",
    "LocalStore",
    "ObjectInfo",
    "RefInfo",
    "Store",
    "default_store_path",
    "open_store",
    "register",
    "resolve_store_url",
    "validate_ref_name",
]
