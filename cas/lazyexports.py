"""A package's entry points by name, imported on first use.

Family packages (`cas.put`, `cas.get`, `cas.gc`, `cas.caches`) offer their
main classes at the package level for library callers, but importing a
package must not import its modules: the families use one another's
modules (get reads files the way put cuts them; put settles through gc's
verify), and eager re-exports would turn that into import cycles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, offers: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` serving `name` from `package.offers[name]`."""

    def __getattr__(name: str) -> object:
        module = offers.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
