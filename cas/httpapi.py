"""Names of the HTTP API that `cas serve` speaks and the `http(s)://` store calls.

One place for paths, headers and limits, so the server and the client
cannot drift apart. docs/http-api.md is the specification for other clients.
"""

from __future__ import annotations

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
