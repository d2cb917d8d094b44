"""Paths several providers share (`/v1/files`, `GET /v1/batches`, `/v1/fine_tuning`): the asking SDK decides, and a
client no SDK marker names gets a 400 naming the prefixes where nothing else can decide (providers/sdks.py); a
prefixed call whose model names another provider's own path goes there (Azure's v1 API under `/openai/v1`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokensense.core.errors import GatewayError
from tokensense.gateway.passthrough import UploadLimit, streams_upload
from tokensense.gateway.routing import model_route, route_request
from tokensense.gateway.stages.admit import body_limit, oversize_refusal
from tokensense.providers import PROVIDERS, register
from tokensense.providers.azure import AzureOpenAIAdapter
from tokensense.providers.sdks import asking_sdk, providers_having

MISTRAL_PY = {"user-agent": "mistral-client-python/1.9.0"}
MISTRAL_TS = {"user-agent": "mistral-client-typescript/1.7.0"}
OPENAI_PY = {"user-agent": "OpenAI/Python 1.99.0", "x-stainless-lang": "python"}
OPENAI_BROWSER = {"x-stainless-lang": "js", "x-stainless-package-version": "5.0.0"}  # a browser sets no User-Agent
ANTHROPIC = {"user-agent": "Anthropic/Python 0.69.0", "anthropic-version": "2023-06-01", "x-stainless-lang": "python"}
GENAI = {"user-agent": "google-genai-sdk/1.40.0 gl-python/3.13", "x-goog-api-client": "google-genai-sdk/1.40.0"}
CURL = {"user-agent": "curl/8.5.0"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (MISTRAL_PY, "mistral"),
        (MISTRAL_TS, "mistral"),
        (OPENAI_PY, "openai"),
        (OPENAI_BROWSER, "openai"),
        (ANTHROPIC, "anthropic"),  # its x-stainless headers are a hint only: anthropic-version names it
        (GENAI, "gemini"),
        (CURL, None),
        ({}, None),
        ({"user-agent": "Mozilla/5.0 (X11; Linux x86_64)", "x-stainless-lang": "js"}, "openai"),  # in a browser
        ({"user-agent": "Groq/Python 0.30.0", "x-stainless-lang": "python"}, None),  # another Stainless-made SDK
    ],
)
def test_asking_sdk(headers: dict[str, str], expected: str | None) -> None:
    asking = asking_sdk(headers)
    assert (asking.name if asking else None) == expected


# (method, path, headers) -> (who serves it: a route's provider or the passthrough's one owner, the prefix it is
# pinned to), or "400" (the asking SDK cannot be told and nothing else can decide).
DECISIONS = [
    # Mistral's SDK never reaches OpenAI on a shared path: its files, batch jobs and fine-tuning go to Mistral.
    ("POST", "/v1/files", MISTRAL_PY, ("mistral", "mistral")),
    ("GET", "/v1/files", MISTRAL_PY, ("mistral", "mistral")),
    ("GET", "/v1/files/file-1", MISTRAL_TS, ("mistral", "mistral")),
    ("DELETE", "/v1/files/file-1", MISTRAL_PY, ("mistral", "mistral")),
    ("GET", "/v1/batch/jobs", MISTRAL_PY, ("mistral", None)),  # Mistral's alone
    ("POST", "/v1/batch/jobs", CURL, ("mistral", None)),
    ("GET", "/v1/fine_tuning/jobs", MISTRAL_PY, ("mistral", "mistral")),
    ("POST", "/v1/fine_tuning/jobs", MISTRAL_PY, ("mistral", "mistral")),
    # OpenAI's SDK keeps OpenAI's routes.
    ("POST", "/v1/files", OPENAI_PY, ("openai", None)),
    ("GET", "/v1/files", OPENAI_BROWSER, ("openai", None)),
    ("GET", "/v1/batches", OPENAI_PY, ("openai", None)),
    ("GET", "/v1/fine_tuning/jobs", OPENAI_PY, ("openai", "openai")),
    # The other SDKs: their own provider.
    ("POST", "/v1/files", ANTHROPIC, ("anthropic", "anthropic")),
    ("GET", "/v1/batches", GENAI, ("gemini", "gemini")),
    ("GET", "/v1/files/abc", GENAI, ("gemini", "gemini")),
    # No SDK told: a list or an upload is a 400; a resource id (its owner) or a JSON body (its model) decides later.
    ("POST", "/v1/files", CURL, "400"),
    ("GET", "/v1/files", CURL, "400"),
    ("GET", "/v1/batches", {}, "400"),
    ("GET", "/v1/files/file-1", CURL, ("openai", None)),  # the batch routes look its owner up
    ("GET", "/v1/fine_tuning/jobs", CURL, (None, None)),  # passed through: the body's model, else a 400 then
    # Paths one provider has, and paths that are not shared at all, are routed as before whoever asks.
    ("POST", "/v1/batches", CURL, ("openai", None)),
    ("POST", "/v1/chat/completions", MISTRAL_PY, (None, None)),  # the body's model decides
    ("GET", "/v1/vector_stores", MISTRAL_PY, ("openai", None)),  # OpenAI's alone
    ("POST", "/v1/messages", OPENAI_PY, (None, None)),
]


@pytest.mark.parametrize(("method", "path", "headers", "expected"), DECISIONS)
def test_shared_path_decision(method: str, path: str, headers: dict[str, str], expected: object) -> None:
    if expected == "400":
        with pytest.raises(GatewayError) as e:
            route_request(method, path, headers)
        assert e.value.status == 400 and e.value.code == "ambiguous_provider"
        assert f"/openai{path}" in e.value.message and "prefix" in e.value.message
        return
    route = route_request(method, path, headers)
    passthrough = route.passthrough
    if passthrough is not None:
        owner = passthrough.providers[0] if len(passthrough.providers) == 1 else None
    else:
        owner = route.provider
    assert (owner, route.prefix) == expected


def test_providers_having() -> None:
    assert {p.name for p in providers_having("POST", "/v1/files")} == {"openai", "anthropic", "xai", "mistral"}
    assert {p.name for p in providers_having("GET", "/v1/batches")} == {"openai", "gemini"}
    assert {p.name for p in providers_having("POST", "/v1/batches")} == {"openai"}
    assert {p.name for p in providers_having("GET", "/v1/fine_tuning/jobs")} == {"openai", "mistral"}
    assert providers_having("POST", "/v1/chat/completions") == []


def test_without_headers_routing_is_unchanged() -> None:
    """Callers that pass no headers (the batch uploads' own classify, tests) route as before."""
    assert route_request("POST", "/v1/files").provider == "openai"
    assert route_request("GET", "/v1/batches").provider == "openai"


@pytest.fixture
def azure() -> Iterator[AzureOpenAIAdapter]:
    before = PROVIDERS["azure"]
    adapter = AzureOpenAIAdapter({"prod-4o": "gpt-4o"})
    register(adapter)
    yield adapter
    register(before)


@pytest.mark.parametrize(
    ("path", "model", "azure_served"),
    [
        ("/openai/v1/chat/completions", "azure/prod-4o", True),
        ("/openai/v1/chat/completions", "prod-4o", True),  # a deployment declared in config.toml
        ("/openai/v1/chat/completions", "azure/undeclared", True),
        ("/openai/v1/embeddings", "azure-openai/embed", True),
        ("/openai/v1/chat/completions", "gpt-4o", False),  # OpenAI's model: the OpenAI prefix
        ("/openai/v1/chat/completions", None, False),
        ("/mistral/v1/chat/completions", "azure/prod-4o", False),  # Azure has no such path
    ],
)
def test_azure_deployment_under_the_openai_prefix(
    azure: AzureOpenAIAdapter, path: str, model: str | None, azure_served: bool
) -> None:
    route = route_request("POST", path)
    assert route.prefix is not None
    rerouted = model_route("POST", route, path.removeprefix(f"/{route.prefix}"), model)
    if not azure_served:
        assert rerouted is None
        return
    assert rerouted is not None and rerouted.prefix is None
    # `azure/NAME` names its provider as without a prefix; a bare deployment name is the route's provider's
    assert rerouted.provider == (None if model and "/" in model else "azure")
    assert dict(rerouted.params or ()) == {"api": "v1"}  # the v1 API upstream, `model` = the deployment


def test_passthrough_uploads_are_streamed_and_bounded_by_the_upload_limit() -> None:
    multipart = {"content-type": "multipart/form-data; boundary=x", "content-length": "2000000"}
    assert streams_upload("POST", multipart)
    assert streams_upload("PUT", {"content-type": "application/octet-stream", "transfer-encoding": "chunked"})
    assert not streams_upload("POST", {"content-type": "application/json", "content-length": "20"})
    assert not streams_upload("GET", multipart)
    assert not streams_upload("POST", {"content-type": "text/plain", "content-length": "0"})
    endpoint = route_request("POST", "/mistral/v1/libraries/lib-1/documents").endpoint  # a passthrough upload
    limit = body_limit(endpoint, max_body_mb=1, max_upload_mb=8, upload=True)
    assert limit == 8 * 1024 * 1024 and body_limit(endpoint, max_body_mb=1, max_upload_mb=8) == 1024 * 1024
    refusal = oversize_refusal(str(9 * 1024 * 1024), limit, endpoint, upload=True)
    assert refusal is not None and refusal.status == 413 and "TOKENSENSE_MAX_UPLOAD_MB" in refusal.message
    cut = UploadLimit(10)
    assert cut(b"12345") == b"12345" and cut(b"67890") == b"67890" and not cut.too_large
    assert cut(b"x") == b"" and cut.too_large and cut(b"more") == b""
