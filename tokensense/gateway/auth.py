"""Finding the TokenSense key in a request, wherever each SDK puts it."""

from __future__ import annotations

from collections.abc import Mapping

from tokensense.providers import PROVIDERS

# Headers that can carry a client's key. All of them are removed before a
# request goes upstream, whichever one held the TokenSense key.
KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")


def client_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The key the client sent: `Authorization: Bearer` (OpenAI SDK, Anthropic SDK 2.x, Bedrock API keys,
    Vertex access tokens), `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (google-genai, Gemini REST),
    `api-key` (Azure OpenAI), or the access key id of a SigV4 `Authorization` (AWS SDKs given the
    TokenSense key as their access key id; the signature is not checked: the gateway signs anew)."""
    auth: str | None = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        for provider in PROVIDERS.values():  # a provider's own signing scheme (SigV4) names the key its own way
            if key := provider.client_key_in(auth):
                return key
    for name in ("x-api-key", "x-goog-api-key", "api-key"):
        header = headers.get(name)
        if header:
            return header.strip()
    param = query.get("key")
    return param.strip() if param else None
