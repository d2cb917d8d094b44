"""OAuth2 access tokens for Vertex AI, from a service-account JSON or Application Default Credentials.

The Vertex credential TokenSense keeps (stored encrypted with `tokensense providers
set vertex --api-key - < service-account.json`, or the file named by
`GOOGLE_APPLICATION_CREDENTIALS`) is a service-account key. google-auth turns it
into short-lived access tokens by calling Google's token endpoint: blocking
network I/O, so `refresh()` runs in a worker thread (`await token()` does that
by itself, and the keystore thread refreshes ahead of expiry); the request path
reads the cached token with `current()`, which never blocks. A token is used
until `margin` seconds before it expires.

A credential that is not JSON is taken as a ready access token (`ya29....`),
for short tests by hand; it is never refreshed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class VertexCredentialError(ValueError):
    """A Vertex credential that is neither a service-account JSON nor an access token."""


class VertexTokenSource:
    """One service account's access token, cached until near expiry and refreshed off the event loop."""

    def __init__(self, credential: str | None, *, margin: float = 300.0) -> None:
        self.margin = margin
        self._lock = threading.Lock()
        self._static: str | None = None
        self._credentials: Any = None
        self._token: str | None = None
        self._expires_at: float = 0.0
        self.project_id: str | None = None
        info = _service_account_info(credential) if credential else None
        if credential and info is None:
            self._static = credential.strip()
        elif info is not None:
            from google.oauth2 import service_account

            try:
                self._credentials = service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
            except (ValueError, KeyError) as e:
                raise VertexCredentialError(f"not a usable service-account key: {e}") from None
            self.project_id = info.get("project_id")

    @property
    def uses_adc(self) -> bool:
        return self._static is None and self._credentials is None

    def current(self) -> str | None:
        """The cached token if it is still good for `margin` seconds; never blocks."""
        if self._static is not None:
            return self._static
        if self._token and self._expires_at - time.time() > self.margin:
            return self._token
        return None

    def refresh(self) -> str:
        """Fetch a new token (blocking: run it in a thread)."""
        if self._static is not None:
            return self._static
        import google.auth
        import google.auth.transport.requests

        with self._lock:
            if (token := self.current()) is not None:
                return token  # another thread refreshed it meanwhile
            if self._credentials is None:  # Application Default Credentials
                self._credentials, project = google.auth.default(scopes=list(SCOPES))
                self.project_id = self.project_id or project
            self._credentials.refresh(google.auth.transport.requests.Request())
            self._token = self._credentials.token
            expiry = self._credentials.expiry  # naive UTC datetime
            self._expires_at = expiry.replace(tzinfo=__import__("datetime").UTC).timestamp() if expiry else \
                time.time() + 3000
            return self._token

    async def token(self) -> str:
        """The token, refreshed in a worker thread when it is missing or near expiry."""
        token = self.current()
        if token is not None:
            return token
        return await asyncio.to_thread(self.refresh)


def _service_account_info(credential: str) -> dict | None:
    text = credential.strip()
    if not text.startswith("{"):
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as e:
        raise VertexCredentialError(f"the Vertex credential looks like JSON but is not valid JSON: {e}") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise VertexCredentialError('the Vertex credential JSON is not a service-account key ("type": "service_account")')
    return info
