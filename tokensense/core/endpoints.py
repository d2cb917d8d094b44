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
    BEDROCK = "bedrock"  # AWS Bedrock runtime: /model/{modelId}/{converse|converse-stream|invoke|invoke-with-response-stream}
    VERTEX = "vertex"  # Vertex AI: /{v}/projects/{p}/locations/{l}/publishers/{google|anthropic}/models/{m}:{action}
    MODELS = "models"
    MODEL = "models.retrieve"
    RESPONSES = "responses"
    RESPONSES_RETRIEVE = "responses.retrieve"
    RESPONSES_DELETE = "responses.delete"
    RESPONSES_CANCEL = "responses.cancel"
    RESPONSES_INPUT_ITEMS = "responses.input_items"
    RESPONSES_INPUT_TOKENS = "responses.input_tokens"
    RESPONSES_COMPACT = "responses.compact"
    HEALTH = "health"
    REQUEST_RECORD = "tokensense.request"  # GET /v1/tokensense/requests/{id}: a call's usage record
    UNKNOWN = "unknown"


# The Responses API routes that name a stored response in the path (`/v1/responses/{id}[/...]`).
RESPONSE_ID_ENDPOINTS = frozenset({
    Endpoint.RESPONSES_RETRIEVE, Endpoint.RESPONSES_DELETE, Endpoint.RESPONSES_CANCEL, Endpoint.RESPONSES_INPUT_ITEMS,
})
# Every Responses API route (handled by addons/responses.py).
RESPONSES_ENDPOINTS = RESPONSE_ID_ENDPOINTS | {
    Endpoint.RESPONSES, Endpoint.RESPONSES_INPUT_TOKENS, Endpoint.RESPONSES_COMPACT,
}
# Actions (from the path) whose answer is a stream, whatever the body says.
STREAM_ACTIONS = frozenset({"streamGenerateContent", "streamRawPredict", "converse-stream", "invoke-with-response-stream"})

# Gemini's `models/{model}:{action}` actions TokenSense forwards; any other action is a 404.
GEMINI_ACTIONS = frozenset({
    "generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents", "predict",
})

# Calls the providers do not charge for: they count a prompt's tokens and generate nothing
# (Anthropic's count_tokens, Gemini's and Vertex AI's countTokens, Responses input_tokens).
FREE_ENDPOINTS = frozenset({Endpoint.COUNT_TOKENS, Endpoint.RESPONSES_INPUT_TOKENS})
FREE_ACTIONS = frozenset({"countTokens"})


def is_free_call(endpoint: Endpoint, action: str | None) -> bool:
    """Whether a call on this route is free: recorded at cost 0 (priced, not unpriced), never refused by a budget."""
    return endpoint in FREE_ENDPOINTS or action in FREE_ACTIONS
