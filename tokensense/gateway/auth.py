"""Finding the TokenSense key in a request, wherever each SDK puts it."""

from __future__ import annotations

from collections.abc import Mapping

# Headers that can carry a client's key. All of them are removed before a
# request goes upstream, whichever one held the TokenSense key.
KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


def client_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The key the client sent: `Authorization: Bearer` (OpenAI SDK, Anthropic SDK 2.x),
    `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (google-genai, Gemini REST)."""
    auth: str | None = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for name in ("x-api-key", "x-goog-api-key"):
        value = headers.get(name)
        if value:
            return value.strip()
    param = query.get("key")
    return param.strip() if param else None
