"""Keeping the store whole and small: collection, verification, repair.

- `collector`: `collect`, `GcOptions`, `Lease`: mark and sweep under a lease.
- `fence`: the put side of the protocol (settle a manifest); `records`: run records.
- `retention`: which refs a collection keeps.
- `repack`: moving verified frames into new packs (repacking, salvage).
- `verify`: `Checker`, `verify_manifests`; `repair`: `cas verify --repair`.
- `reindex`: an index rebuilt from packs; `idset`: on-disk id sets for marks.
"""

from cas.lazyexports import lazy_exports

__getattr__ = lazy_exports(
    __name__,
    {
        "collect": "collector",
        "GcOptions": "collector",
        "GcReport": "collector",
        "verify_manifests": "verify",
        "Checker": "verify",
    },
)
