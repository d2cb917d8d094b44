"""Google Vertex AI: Gemini and Claude on Vertex paths, and an OAuth2 token endpoint for service accounts.

- `POST /{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{m}:{action}`:
  Gemini's format (the `gemini_format` handlers).
- `POST .../publishers/anthropic/models/{m}:rawPredict` / `:streamRawPredict`: Anthropic
  Messages with `anthropic_version` in the body and the model in the path;
  `.../models/count-tokens:rawPredict` counts tokens.
- `POST /token`: the OAuth2 JWT-bearer grant google-auth makes for a service
  account whose `token_uri` points here. The assertion's claims are checked
  (issuer, audience = Google's token endpoint, cloud-platform scope, not expired) and an access
  token `ya29.fake-...` is issued.

Model calls need `Authorization: Bearer` with a token this fake issued, or
`STATIC_TOKEN` for clients given a token directly; anything else is a 401
`UNAUTHENTICATED` in Google's error shape.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from tokensense.demo.fakeprovider import anthropic_format, gemini_format
from tokensense.demo.fakeprovider.replies import BodyReply, FakeError, FakeRequest, Reply, json_reply

NAME = "vertex"
STATIC_TOKEN = "ya29.fake-static-test-token"
MISSING_KEY = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
               "other valid authentication credential.")
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
ISSUED_TOKENS: dict[str, str] = {}
"""Access token -> the service account (JWT issuer) it was issued to."""

error = gemini_format.error


def authenticated(req: FakeRequest) -> bool:
    auth = req.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if token in ISSUED_TOKENS:
        req.params["auth"] = f"oauth:{ISSUED_TOKENS[token]}"
        return True
    if token == STATIC_TOKEN:
        req.params["auth"] = "oauth:static"
        return True
    return False


def _body(req: FakeRequest) -> dict[str, Any]:
    if not isinstance(req.body, dict):
        raise FakeError(400, "Invalid JSON payload received.")
    return req.body


def predict(req: FakeRequest) -> Reply:
    if req.params["publisher"] == "google":
        return gemini_format.ACTIONS[req.params["action"]](req)
    body = _body(req)
    if req.params["model"] == "count-tokens":
        return anthropic_format.count_tokens(req)
    if "anthropic_version" not in body:
        raise FakeError(400, "anthropic_version: Field required")
    if "model" in body:
        raise FakeError(400, "model: Extra inputs are not permitted (the model is in the URL on Vertex AI)")
    stream = req.params["action"] == "streamRawPredict"
    if bool(body.get("stream")) != stream:
        raise FakeError(400, f"{req.params['action']} needs stream={str(stream).lower()} in the body")
    inner = dataclasses.replace(req, body={**body, "model": req.params["model"]})
    try:
        return anthropic_format.messages(inner)
    except FakeError as e:
        raise FakeError(400, e.message) from None


def _jwt_claims(assertion: str) -> dict[str, Any]:
    try:
        _, payload, _ = assertion.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        raise FakeError(400, "invalid_grant: the assertion is not a JWT") from None
    if not isinstance(claims, dict):
        raise FakeError(400, "invalid_grant: the assertion is not a JWT")
    return claims


def token(req: FakeRequest) -> Reply:
    """OAuth2 token endpoint (form-encoded JWT-bearer grant), answered as Google's is."""
    form = {key: values[0] for key, values in parse_qs(req.raw_body.decode("utf-8", "replace")).items()}
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not form.get("assertion"):
        return json_reply({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}, status=400)
    claims = _jwt_claims(form["assertion"])
    now = time.time()
    # google-auth always names Google's token endpoint as the audience, wherever token_uri points.
    audiences = (f"{req.origin}{req.path}", GOOGLE_TOKEN_ENDPOINT)
    problems = []
    if not claims.get("iss"):
        problems.append("no issuer")
    if claims.get("aud") not in audiences:
        problems.append(f"audience is not {GOOGLE_TOKEN_ENDPOINT}")
    if "cloud-platform" not in str(claims.get("scope", "")):
        problems.append("no cloud-platform scope")
    if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < now:
        problems.append("expired")
    if problems:
        return json_reply({"error": "invalid_grant", "error_description": "; ".join(problems)}, status=400)
    access_token = "ya29.fake-" + secrets.token_urlsafe(24)
    ISSUED_TOKENS[access_token] = str(claims["iss"])
    return json_reply({"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"})


class TokenEndpoint:
    """The format module of `/token` (no key: the assertion is the credential)."""

    NAME = "google-oauth"
    MISSING_KEY = ""

    @staticmethod
    def authenticated(req: FakeRequest) -> bool:
        return True

    @staticmethod
    def error(status: int, message: str, param: str | None = None) -> BodyReply:
        return json_reply({"error": "invalid_request", "error_description": message}, status=status)
