"""The client-facing endpoints TokenSense serves (a leaf module: providers and routing both use it)."""

from __future__ import annotations

from enum import StrEnum


class Endpoint(StrEnum):
    CHAT = "chat.completions"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"
    COUNT_TOKENS = "messages.count_tokens"
    GEMINI = "gemini"
    IMAGES = "images.generations"
    SPEECH = "audio.speech"
    TRANSCRIPTIONS = "audio.transcriptions"
    MODELS = "models"
    HEALTH = "health"
    REQUEST_RECORD = "tokensense.request"  # GET /v1/tokensense/requests/{id}: a call's usage record
    UNKNOWN = "unknown"


# Gemini's `models/{model}:{action}` actions TokenSense forwards; any other action is a 404.
GEMINI_ACTIONS = frozenset({
    "generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents", "predict",
})
