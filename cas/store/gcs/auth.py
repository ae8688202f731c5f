"""OAuth bearer tokens for GCS from Application Default Credentials.

1. The first request looks the credentials up with `google.auth.default()`:
   `GOOGLE_APPLICATION_CREDENTIALS`, the gcloud ADC file, workload identity
   federation, or the metadata server of a GCE/GKE runner.
2. Tokens are refreshed before they expire (google-auth's `valid` already
   leaves a safety margin). Lookup and refresh are blocking HTTP calls, so
   they run in a worker thread; one lock makes concurrent requests wait for a
   single refresh instead of starting one each.
3. Against an emulator (`STORAGE_EMULATOR_HOST`) no credentials are used.

`google-auth` is imported only here and only when a `gs://` store is used.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import TYPE_CHECKING, Any, Final

from cas.errors import CasError, PermissionDenied, StoreUnavailable

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

# read_write covers create, get, list and delete of objects; nothing on buckets or IAM.
SCOPES: Final = ("https://www.googleapis.com/auth/devstorage.read_write",)


class GcsAuth:
    """Adds `Authorization` headers; safe to share between tasks and threads."""

    def __init__(self, *, anonymous: bool, where: str) -> None:
        self.anonymous = anonymous
        self._where = where
        self._credentials: Credentials | None = None
        self._transport: Any = None
        self._lock = threading.Lock()

    async def headers(self) -> dict[str, str]:
        """Headers for one request, refreshing the token first when it is due."""
        if self.anonymous:
            return {}
        credentials = self._credentials
        if credentials is None or not credentials.valid:
            credentials = await asyncio.to_thread(self._refresh, False)
        return {"Authorization": f"Bearer {credentials.token}"}

    async def force_refresh(self) -> None:
        """Get a new token now (the server said the current one is no good)."""
        if not self.anonymous:
            await asyncio.to_thread(self._refresh, True)

    def _refresh(self, force: bool) -> Credentials:
        with self._lock:
            try:
                return self._refresh_locked(force)
            except CasError:
                raise
            except Exception as exc:
                raise _translate_auth_error(exc, self._where) from None

    def _refresh_locked(self, force: bool) -> Credentials:
        import google.auth
        import google.auth.transport.requests

        if self._credentials is None:
            with warnings.catch_warnings():
                # gcloud user credentials warn about quota projects on stderr;
                # the CLI keeps stderr for its own one-line messages.
                warnings.simplefilter("ignore", UserWarning)
                self._credentials, _project = google.auth.default(scopes=SCOPES)
        if force or not self._credentials.valid:
            if self._transport is None:
                self._transport = google.auth.transport.requests.Request()
            self._credentials.refresh(self._transport)
        return self._credentials


def _translate_auth_error(exc: Exception, where: str) -> CasError:
    """google-auth failures as `cas.errors`: missing or refused credentials are permanent."""
    from google.auth import exceptions

    if isinstance(exc, exceptions.DefaultCredentialsError):
        return PermissionDenied(
            f"no usable Google credentials for {where} ({exc}): set "
            "GOOGLE_APPLICATION_CREDENTIALS, run 'gcloud auth application-default login', "
            "or run on GCP with a service account"
        )
    if isinstance(exc, exceptions.RefreshError) and not getattr(exc, "retryable", False):
        return PermissionDenied(f"Google credentials for {where} were refused: {exc}")
    if isinstance(exc, exceptions.GoogleAuthError):
        return StoreUnavailable(f"could not get a Google access token for {where}: {exc}")
    return StoreUnavailable(f"could not get a Google access token for {where}: {exc!r}")
