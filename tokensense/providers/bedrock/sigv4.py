"""AWS credentials for Bedrock and SigV4 signing (and verifying, for the fake) with botocore.

A Bedrock credential is one of:

- `ACCESS_KEY_ID:SECRET_ACCESS_KEY` or `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`
  (`tokensense providers set bedrock --api-key AKIA...:wJal...`, stored encrypted
  like every provider key, or `TOKENSENSE_BEDROCK_CREDENTIALS` / the variable the
  provider names);
- a Bedrock API key (`ABSK...`, AWS's bearer tokens for Bedrock), sent as
  `Authorization: Bearer`;
- nothing: then the standard AWS chain (environment, shared config and
  credentials files, SSO, container and instance roles) via botocore's session.
  The chain can do network I/O, so it is resolved off the event loop
  (`resolve_chain_credentials`), and its temporary credentials are refreshed
  there too; the request path only reads the frozen copy.
"""

from __future__ import annotations

import hmac
import re
import threading
import time
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials

SERVICE = "bedrock"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)"
    r"/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;\-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


class AwsKeys(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None = None


class CredentialError(ValueError):
    """A stored Bedrock credential that is neither keys nor a Bedrock API key."""


def parse_credential(value: str) -> AwsKeys | str:
    """`AKID:SECRET[:TOKEN]` → AwsKeys; a Bedrock API key (no colon, or `ABSK` prefix) → the bearer string."""
    value = value.strip()
    if not value:
        raise CredentialError("the Bedrock credential is empty")
    if value.startswith("ABSK") or ":" not in value:
        return value
    parts = value.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise CredentialError("a Bedrock credential is ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] or a Bedrock API key")
    return AwsKeys(parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else None)


class ChainCredentials:
    """Credentials from the standard AWS chain, resolved and refreshed in a worker thread.

    `current()` never blocks: it returns the last frozen credentials (None until
    the first resolution finished). `refresh()` is blocking; the keystore's
    background thread calls it, and again whenever the credentials are within
    `refresh_margin` seconds of expiring.
    """

    def __init__(self, *, profile: str | None = None, refresh_margin: float = 300.0) -> None:
        self.profile = profile
        self.refresh_margin = refresh_margin
        self._lock = threading.Lock()
        self._source = None
        self._frozen: AwsKeys | None = None
        self._expires_at: float | None = None
        self.region: str | None = None

    def current(self) -> AwsKeys | None:
        return self._frozen

    def needs_refresh(self) -> bool:
        if self._frozen is None:
            return True
        return self._expires_at is not None and self._expires_at - time.time() < self.refresh_margin

    def refresh(self) -> AwsKeys | None:
        """Resolve (first call) or refresh the chain; blocking, never call it on the event loop."""
        import botocore.session

        with self._lock:
            if self._source is None:
                session = botocore.session.Session(profile=self.profile)
                self._source = session.get_credentials()
                self.region = session.get_config_variable("region")
            if self._source is None:
                return None
            frozen: ReadOnlyCredentials = self._source.get_frozen_credentials()
            self._frozen = AwsKeys(frozen.access_key, frozen.secret_key, frozen.token)
            expiry = getattr(self._source, "_expiry_time", None)
            self._expires_at = expiry.timestamp() if expiry is not None else None
            return self._frozen


def sign_headers(keys: AwsKeys, *, method: str, url: str, headers: Mapping[str, str], body: bytes,
                 region: str, service: str = SERVICE) -> dict[str, str]:
    """The headers SigV4 adds for this exact request: Authorization, X-Amz-Date (and X-Amz-Security-Token).

    `url` must be the upstream URL with its path exactly as it will be sent
    (percent-encoding included) and `headers` the headers to sign (host,
    content-type, ...) with the values they will carry.
    """
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    SigV4Auth(Credentials(keys.access_key, keys.secret_key, keys.token), service, region).add_auth(request)
    added = {"authorization": request.headers["Authorization"], "x-amz-date": request.headers["X-Amz-Date"]}
    if keys.token:
        added["x-amz-security-token"] = keys.token
    return added


class SignedBy(NamedTuple):
    access_key: str
    region: str
    service: str


def access_key_of(authorization: str) -> str | None:
    """The access key id named in a SigV4 `Authorization` header (no verification)."""
    match = _AUTHORIZATION.match(authorization.strip())
    return match["akid"] if match else None


def verify_signature(*, method: str, url: str, headers: Mapping[str, str], body: bytes,
                     secrets: Mapping[str, str]) -> SignedBy | None:
    """Check a SigV4-signed request against the secret of its access key; None when it does not verify.

    `url` is the URL as received (raw, percent-encoded path and query);
    `headers` the request headers (any case). Used by the fake provider to prove
    the gateway signed what it forwarded.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    match = _AUTHORIZATION.match(lower.get("authorization", "").strip())
    amz_date = lower.get("x-amz-date", "")
    if match is None or not amz_date.startswith(match["date"]):
        return None
    secret = secrets.get(match["akid"])
    if secret is None:
        return None
    signed = match["signed"].split(";")
    if "host" not in signed or any(name not in lower for name in signed):
        return None
    request = AWSRequest(method=method, url=url, headers={name: lower[name] for name in signed}, data=body)
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(match["akid"], secret, lower.get("x-amz-security-token")), match["service"],
                     match["region"])
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        return None
    return SignedBy(match["akid"], match["region"], match["service"])


def host_of(url: str) -> str:
    return urlsplit(url).netloc
