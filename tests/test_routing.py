"""Endpoint classification, provider routing by model name, key extraction and error shapes."""

from __future__ import annotations

import pytest

from tokensense.config import ModelPrice
from tokensense.core.errors import ErrorShape, GatewayError, error_body
from tokensense.gateway.auth import client_key
from tokensense.gateway.body import parse_json_body
from tokensense.gateway.routing import Endpoint, classify, join_url, resolve_model
from tokensense.metering.pricing import PriceBook
from tokensense.providers import error_shape_for_path
from tokensense.providers.anthropic import ANTHROPIC_ERRORS
from tokensense.providers.gemini import GOOGLE_ERRORS
from tokensense.providers.gemini import NATIVE as GEMINI
from tokensense.providers.openai import OPENAI_ERRORS

BOOK = PriceBook({"my-finetune": ModelPrice(provider="openai", input_per_mtok=1, output_per_mtok=2)})


@pytest.mark.parametrize(("method", "path", "endpoint", "fmt"), [
    ("POST", "/v1/chat/completions", Endpoint.CHAT, OPENAI_ERRORS),
    ("POST", "/chat/completions", Endpoint.CHAT, OPENAI_ERRORS),
    ("POST", "/v1/embeddings", Endpoint.EMBEDDINGS, OPENAI_ERRORS),
    ("POST", "/v1/messages", Endpoint.MESSAGES, ANTHROPIC_ERRORS),
    ("POST", "/v1beta/models/gemini-2.5-flash:generateContent", GEMINI, GOOGLE_ERRORS),
    ("POST", "/v1/models/gemini-2.5-flash:streamGenerateContent", GEMINI, GOOGLE_ERRORS),
    ("GET", "/v1/models", Endpoint.MODELS, OPENAI_ERRORS),
    ("GET", "/health", Endpoint.HEALTH, OPENAI_ERRORS),
])
def test_classify(method: str, path: str, endpoint: Endpoint, fmt: ErrorShape) -> None:
    route = classify(method, path)
    assert route.endpoint is endpoint and route.fmt is fmt


def test_classify_gemini_reads_model_and_action() -> None:
    route = classify("POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent")
    assert (route.model, route.action) == ("gemini-2.5-pro", "streamGenerateContent")


def test_unknown_endpoint_is_404() -> None:
    with pytest.raises(GatewayError) as e:
        classify("POST", "/v2/unknown")
    assert e.value.status == 404


@pytest.mark.parametrize(("model", "provider", "name"), [
    ("gpt-4o-mini", "openai", "gpt-4o-mini"),
    ("o3-mini", "openai", "o3-mini"),
    ("text-embedding-3-small", "openai", "text-embedding-3-small"),
    ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
    ("gemini-2.5-flash", "gemini", "gemini-2.5-flash"),
    ("grok-4", "xai", "grok-4"),
    ("mistral-small-latest", "mistral", "mistral-small-latest"),
    ("codestral-latest", "mistral", "codestral-latest"),
    ("openai/gpt-4o", "openai", "gpt-4o"),
    ("google/gemini-2.5-pro", "gemini", "gemini-2.5-pro"),
    ("my-finetune", "openai", "my-finetune"),
    ("openai/my-finetune", "openai", "my-finetune"),
])
def test_resolve_model(model: str, provider: str, name: str) -> None:
    adapter, resolved = resolve_model(model, BOOK)
    assert (adapter.name, resolved) == (provider, name)


@pytest.mark.parametrize("model", ["gpt-does-not-exist", "llama-3-70b", "claude-imaginary-9"])
def test_unknown_models_are_404(model: str) -> None:
    with pytest.raises(GatewayError) as e:
        resolve_model(model, BOOK)
    assert e.value.status == 404 and model in e.value.message


def test_missing_model_is_400() -> None:
    with pytest.raises(GatewayError) as e:
        resolve_model(None, BOOK)
    assert e.value.status == 400 and e.value.param == "model"


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_bad_json_is_400(raw: bytes) -> None:
    with pytest.raises(GatewayError) as e:
        parse_json_body(raw)
    assert e.value.status == 400


@pytest.mark.parametrize(("headers", "query", "key"), [
    ({"authorization": "Bearer tsk_a"}, {}, "tsk_a"),
    ({"x-api-key": "tsk_b"}, {}, "tsk_b"),
    ({"x-goog-api-key": "tsk_c"}, {}, "tsk_c"),
    ({}, {"key": "tsk_d"}, "tsk_d"),
    ({"authorization": "Basic abc"}, {}, None),
    ({}, {}, None),
])
def test_client_key_from_every_sdk_location(headers: dict, query: dict, key: str | None) -> None:
    assert client_key(headers, query) == key


def test_base_url_prefix_is_kept() -> None:
    assert join_url("https://gw.example.com/openai/", "/v1/chat/completions") == \
        "https://gw.example.com/openai/v1/chat/completions"
    assert join_url("http://h", "/v1beta/models/m:streamGenerateContent", "alt=sse").endswith("?alt=sse")


def test_error_shapes_per_endpoint_format() -> None:
    assert error_body(OPENAI_ERRORS, 401, "no")["error"]["type"] == "authentication_error"
    assert error_body(ANTHROPIC_ERRORS, 404, "no") == {"type": "error",
                                                            "error": {"type": "not_found_error", "message": "no"}}
    assert error_body(GOOGLE_ERRORS, 403, "no") == {"error": {"code": 403, "message": "no",
                                                                   "status": "PERMISSION_DENIED"}}
    assert error_shape_for_path("/v1/messages") is ANTHROPIC_ERRORS
    assert error_shape_for_path("/v1beta/models/x:generateContent") is GOOGLE_ERRORS


VERTEX = "/v1/projects/p/locations/us-east5/publishers"
# Every path served before the route table moved into the providers, with the endpoint id its records carry
# (existing data depends on it), the error shape's name, and the route properties the pipeline branches on:
# (stream, body_streams, free, retried, model_in_body, provider named by the path).
ROUTE_TABLE = [
    ("POST", "/v1/chat/completions", "chat.completions", "openai", (False, True, False, True, True, None)),
    ("POST", "/chat/completions", "chat.completions", "openai", (False, True, False, True, True, None)),
    ("POST", "/embeddings", "embeddings", "openai", (False, True, False, True, True, None)),
    ("POST", "/v1/images/generations", "images.generations", "openai", (False, True, False, False, True, None)),
    ("POST", "/v1/audio/speech", "audio.speech", "openai", (False, True, False, False, True, None)),
    ("POST", "/v1/audio/transcriptions", "audio.transcriptions", "openai", (False, True, False, False, True, None)),
    ("POST", "/v1/audio/translations", "audio.translations", "openai", (False, True, False, False, True, None)),
    ("POST", "/v1/images/edits", "images.edits", "openai", (False, True, False, False, True, None)),
    ("POST", "/v1/images/variations", "images.variations", "openai", (False, True, False, False, True, None)),
    ("POST", "/v1/completions", "completions", "openai", (False, True, False, False, True, None)),
    ("POST", "/completions", "completions", "openai", (False, True, False, False, True, None)),
    ("POST", "/v1/moderations", "moderations", "openai", (False, True, True, False, True, None)),
    ("POST", "/v1/fim/completions", "fim.completions", "openai", (False, True, False, False, True, None)),
    ("POST", "/responses", "responses", "openai", (False, True, False, False, True, None)),
    ("POST", "/v1/responses/input_tokens", "responses.input_tokens", "openai", (False, True, True, False, True, None)),
    ("POST", "/v1/responses/compact", "responses.compact", "openai", (False, True, False, False, True, None)),
    ("GET", "/v1/responses/resp_1", "responses.retrieve", "openai", (False, True, False, False, True, None)),
    ("DELETE", "/responses/resp_1", "responses.delete", "openai", (False, True, False, False, True, None)),
    ("POST", "/v1/responses/resp_1/cancel", "responses.cancel", "openai", (False, True, False, False, True, None)),
    ("GET", "/v1/responses/resp_1/input_items", "responses.input_items", "openai",
     (False, True, False, False, True, None)),
    ("POST", "/v1/messages", "messages", "anthropic", (False, True, False, True, True, None)),
    ("POST", "/v1/messages/count_tokens", "messages.count_tokens", "anthropic", (False, True, True, True, True, None)),
    ("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "gemini", "google",
     (True, False, False, True, False, None)),
    ("POST", "/v1/models/gemini-2.5-flash:countTokens", "gemini", "google", (False, False, True, True, False, None)),
    ("POST", "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream", "bedrock", "aws",
     (True, True, False, False, False, "bedrock")),
    ("POST", "/model/amazon.nova-pro-v1%3A0/converse", "bedrock", "aws", (False, True, False, False, False, "bedrock")),
    ("POST", f"{VERTEX}/google/models/gemini-2.5-flash:countTokens", "vertex", "google",
     (False, True, True, False, False, "vertex")),
    ("POST", f"{VERTEX}/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict", "vertex", "anthropic",
     (True, True, False, False, False, "vertex")),
    ("POST", "/openai/deployments/prod-4o/chat/completions", "chat.completions", "openai",
     (False, True, False, True, True, "azure")),
    ("POST", "/openai/v1/embeddings", "embeddings", "openai", (False, True, False, True, True, "azure")),
    ("GET", "/v1/models", "models", "openai", (False, True, False, False, True, None)),
    ("GET", "/models", "models", "openai", (False, True, False, False, True, None)),
    ("GET", "/v1beta/models", "models", "google", (False, True, False, False, True, None)),
    ("GET", "/v1/models/gpt-4o", "models.retrieve", "openai", (False, True, False, False, True, None)),
    ("GET", "/v1beta/models/gemini-2.5-flash", "models.retrieve", "google", (False, True, False, False, True, None)),
    ("HEAD", "/", "health", "openai", (False, True, False, False, True, None)),
    ("GET", "/v1/tokensense/requests/0123456789abcdef", "tokensense.request", "openai",
     (False, True, False, False, True, None)),
]


@pytest.mark.parametrize(("method", "path", "endpoint", "shape", "properties"), ROUTE_TABLE,
                         ids=[f"{m} {p}" for m, p, *_ in ROUTE_TABLE])
def test_every_path_keeps_its_endpoint_shape_and_properties(method: str, path: str, endpoint: str, shape: str,
                                                            properties: tuple) -> None:
    route = classify(method, path)
    assert (route.endpoint.value, route.fmt.name) == (endpoint, shape)
    assert (route.stream, route.body_streams, route.free, route.retried, route.model_in_body, route.provider) == \
        properties


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/responses/input_tokens"), ("POST", "/v1/responses/resp_1"), ("POST", "/v1/models"),
    ("POST", "/openai/v1/responses"), ("POST", "/openai/deployments/x/completions"), ("POST", "/model/../converse"),
    ("POST", f"{VERTEX}/google/models/gemini-2.5-flash:rawPredict"), ("GET", "/v1/messages"),
    ("POST", "/v1beta/models/gemini-2.5-flash:deleteFile"), ("GET", "/v1/images/edits"),
    ("POST", "/v1/images/edits/x"), ("POST", "/v1/fim/completions/../chat"),
])
def test_paths_not_served_stay_404(method: str, path: str) -> None:
    with pytest.raises(GatewayError) as e:
        classify(method, path)
    assert e.value.status == 404


def test_errors_on_unrouted_paths_take_the_shape_of_their_prefix() -> None:
    assert error_shape_for_path("/model/x/unknown").name == "aws"
    assert error_shape_for_path("/v1/messages/batches").name == "anthropic"
    assert error_shape_for_path("/v1/models/x:unknownAction").name == "google"
    assert error_shape_for_path("/v2/nothing").name == "openai"
