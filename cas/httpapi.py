"""Names of the HTTP API that `cas serve` speaks and the `http(s)://` store calls.

One place for paths, headers and limits, so the server and the client
cannot drift apart. docs/http-api.md is the specification for other clients.
"""

from __future__ import annotations

import struct
from typing import Final

API_PREFIX: Final = "/v1"

# Headers of a `HEAD` (stat) answer: exact size and creation time of the stored object.
SIZE_HEADER: Final = "Cas-Object-Size"
MTIME_HEADER: Final = "Cas-Object-Mtime"

# One `missing` request carries at most this many ids; clients split larger sets.
MAX_MISSING_IDS: Final = 100_000
# The JSON body of such a request (67 bytes per quoted id plus a comma) fits in this.
MAX_JSON_BODY: Final = 8 << 20

# Listings are newline-delimited JSON ending in this record, so that a listing
# cut off by a dropped connection is never mistaken for a complete one.
END_KEY: Final = "end"
ERROR_KEY: Final = "error"

JSON_LINES: Final = "application/x-ndjson"
OCTETS: Final = "application/octet-stream"

# Batch transfer (`POST /v1/KIND/put`, `POST /v1/KIND/get`): one request carries
# many objects as records `ID (32 raw bytes) | LENGTH (u64 big-endian) | BYTES`.
RECORD_HEADER: Final = struct.Struct(">32sQ")
# LENGTH values that carry no bytes: the object is absent; or the server failed
# and a u32 big-endian length and a JSON error body follow, ending the stream.
ABSENT: Final = (1 << 64) - 1
FAILED: Final = (1 << 64) - 2
FAILURE_HEADER: Final = struct.Struct(">I")
MAX_BATCH_OBJECTS: Final = 1024
MAX_BATCH_BODY: Final = 32 << 20
