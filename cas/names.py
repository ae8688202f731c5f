"""What a user may call a manifest: its id, a ref, or a unique id prefix.

A name that is both a ref and a hex prefix means the ref (as in git); an
ambiguous prefix lists the candidates; a name that matches nothing gets a
"did you mean" from the ref names.
"""

from __future__ import annotations

import difflib
import re
from typing import Final

from cas.errors import ObjectNotFound, UsageError
from cas.ids import ObjectId, is_object_id
from cas.store.base import Kind, Store, validate_ref_name

_ID_PREFIX_RE: Final = re.compile(r"[0-9a-f]{8,63}")
"""A unique prefix of a manifest id is accepted from 8 hex characters on (as git and restic)."""


async def resolve_name(store: Store, name: str) -> ObjectId:
    """A manifest id from 64 hex characters, a ref name, or a unique id prefix.

    A name that is both a ref and a hex prefix means the ref (as in git).
    """
    if is_object_id(name):
        return ObjectId.parse(name)
    prefix = name if _ID_PREFIX_RE.fullmatch(name) else None
    validate_ref_name(name)
    try:
        return await store.read_ref(name)
    except ObjectNotFound:
        pass
    if prefix is not None:
        found = [info.id async for info in store.list(Kind.MANIFEST, prefix)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            shown = ", ".join(str(i) for i in sorted(found)[:10])
            more = f" and {len(found) - 10} more" if len(found) > 10 else ""
            raise UsageError(
                f"id prefix {name!r} is ambiguous: {len(found)} manifests match ({shown}{more})"
            )
    raise ObjectNotFound(f"no manifest id or ref named {name!r}{await _suggest(store, name)}")


async def _suggest(store: Store, name: str) -> str:
    """The "did you mean" tail of a not-found error: close ref names, or where to look."""
    refs = [ref.name async for ref in store.list_refs("")]
    close = difflib.get_close_matches(name, refs, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(repr(c) for c in close)}? (cas refs lists them)"
    return " (cas refs lists the refs)" if refs else ""
