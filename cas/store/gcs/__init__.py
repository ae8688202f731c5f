"""Google Cloud Storage as a store: `--store gs://BUCKET/PREFIX`.

- `store`: `GcsStore`, the backend; `location`: URLs and object names.
- `http`: requests to the JSON API; `batch`: the batch endpoint.
- `auth`: Application Default Credentials; `errors`: answers as typed errors.
"""

from cas.lazyexports import lazy_exports

__getattr__ = lazy_exports(__name__, {"GcsStore": "store"})
