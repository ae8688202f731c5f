"""Which of many objects a bucket lacks: metadata GETs, 100 to a batch request.

A 404 in a sub-answer means absent; any other failure (a missing bucket,
a 403, a 503) fails the whole call, typed as any single request would be.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote

from cas.errors import ObjectNotFound, StoreUnavailable
from cas.ids import ObjectId
from cas.store.base import Kind
from cas.store.gcs.batch import BatchGarbled, batch_body, parse_batch
from cas.store.gcs.errors import object_call, read_call, translate_status
from cas.store.gcs.http import GcsHttp
from cas.store.gcs.location import GcsLocation


async def absent_among(
    http: GcsHttp, location: GcsLocation, kind: Kind, group: list[ObjectId]
) -> set[ObjectId]:
    """One batch of metadata GETs; 404 means absent, any other failure fails the call."""
    call = read_call(f"existence checks of {len(group)} {kind} objects")
    boundary = secrets.token_hex(16)
    base = f"/storage/v1/b/{quote(location.bucket, safe='')}/o/"
    paths = [f"{base}{quote(location.object_name(kind, i), safe='')}?fields=name" for i in group]
    answer = await http.send(
        "POST",
        http.batch_url,
        call,
        data=batch_body(paths, boundary),
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
    )
    try:
        subs = parse_batch(answer.content_type, answer.body, len(group))
    except BatchGarbled as exc:
        raise StoreUnavailable(
            f"GCS sent a batch answer that cannot be read for {call.what} ({location.url}): {exc}"
        ) from None
    absent: set[ObjectId] = set()
    for object_id, sub in zip(group, subs, strict=True):
        if sub.status == 200:
            continue
        call = object_call(read_call, kind, object_id)
        error = translate_status(sub.status, sub.body, call, location)
        if type(error) is not ObjectNotFound:  # a missing bucket, a 403, a 503...
            raise error
        absent.add(object_id)
    return absent
