"""Model lists and single models in the asking SDK's shape, read back by the anthropic, google-genai and openai SDKs.

The shapes are the providers' (`Provider.model_list_shape`); the gateway picks the one that claims a request.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import httpx2
import openai
from google import genai
from google.genai import types

from tokensense.gateway.model_lists import find, listed, served_in, shape_for, shapes
from tokensense.providers import get_provider
from tokensense.providers.anthropic import ANTHROPIC_ERRORS
from tokensense.providers.gemini import GOOGLE_ERRORS
from tokensense.providers.model_lists import ModelListShape
from tokensense.providers.openai import OPENAI_ERRORS

ANTHROPIC = get_provider("anthropic").model_list_shape()
GOOGLE = get_provider("gemini").model_list_shape()
OPENAI = get_provider("openai").model_list_shape()

MODELS = listed({"object": "list", "data": [
    {"id": "claude-sonnet-4-5", "object": "model", "created": 0, "owned_by": "anthropic"},
    {"id": "gemini-2.5-flash", "object": "model", "created": 0, "owned_by": "gemini"},
    {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "openai"},
]})


def serve(shape: ModelListShape, http=httpx):
    def answer(request):
        path = request.url.path
        query = dict(request.url.params)
        tail = path.rsplit("/models", 1)[1].strip("/")
        if tail:
            model = find(MODELS, tail)
            return http.Response(200, json=shape.entry(model)) if model else http.Response(404, json={})
        return http.Response(200, json=shape.listing(MODELS, query))
    return http.MockTransport(answer)


def test_shape_follows_the_sdk() -> None:
    assert shape_for("/v1/models", {"anthropic-version": "2023-06-01"}) is ANTHROPIC
    assert shape_for("/v1beta/models", {}) is GOOGLE
    assert shape_for("/v1beta/models", {"anthropic-version": "2023-06-01"}) is GOOGLE  # the path wins
    assert shape_for("/v1/models", {"x-goog-api-client": "google-genai-sdk/1"}) is GOOGLE
    assert shape_for("/v1/models", {"user-agent": "OpenAI/Python"}) is OPENAI
    assert (ANTHROPIC.error_format, GOOGLE.error_format, OPENAI.error_format) == \
        (ANTHROPIC_ERRORS, GOOGLE_ERRORS, OPENAI_ERRORS)


def test_each_shape_is_contributed_once() -> None:
    """OpenAI-format providers (xAI, Mistral, Azure) share OpenAI's shape: it is listed once, and it is the fallback."""
    assert shapes() == [OPENAI, ANTHROPIC, GOOGLE]
    assert [s for s in shapes() if s.fallback] == [OPENAI]


def test_catalog_names() -> None:
    claude = find(MODELS, "claude-sonnet-4-5")
    assert claude.display_name != "claude-sonnet-4-5" and claude.context_window
    assert find(MODELS, "models/gemini-2.5-flash").id == "gemini-2.5-flash"
    assert find(MODELS, "openai/gpt-4o").id == "gpt-4o"
    assert find(MODELS, "gpt-5") is None


def test_anthropic_sdk_lists_pages_and_retrieves() -> None:
    client = anthropic.Anthropic(api_key="k", base_url="http://t", http_client=httpx2.Client(transport=serve(ANTHROPIC, httpx2)))
    page = client.models.list(limit=2)
    assert [m.id for m in page.data] == ["claude-sonnet-4-5", "gemini-2.5-flash"] and page.has_more
    assert [m.id for m in client.models.list(limit=2)] == [m.id for m in MODELS]  # auto-paginates with after_id
    model = client.models.retrieve("claude-sonnet-4-5")
    assert model.display_name == find(MODELS, "claude-sonnet-4-5").display_name and model.type == "model"


def test_google_sdk_lists_pages_and_gets() -> None:
    transport = serve(GOOGLE)
    client = genai.Client(api_key="k", http_options=types.HttpOptions(
        base_url="http://t", api_version="v1beta", httpx_client=httpx.Client(transport=transport)))
    names = [m.name for m in client.models.list(config={"page_size": 2})]
    assert names == [f"models/{m.id}" for m in MODELS]
    model = client.models.get(model="gemini-2.5-flash")
    assert model.supported_actions == ["generateContent", "streamGenerateContent", "countTokens"]
    assert model.input_token_limit == find(MODELS, "gemini-2.5-flash").context_window


def test_openai_sdk_lists_and_retrieves() -> None:
    client = openai.OpenAI(api_key="k", base_url="http://t/v1", http_client=httpx.Client(transport=serve(OPENAI)))
    assert [m.id for m in client.models.list()] == [m.id for m in MODELS]
    assert client.models.retrieve("gpt-4o").owned_by == "openai"


def test_bad_paging_values_fall_back() -> None:
    out = GOOGLE.listing(MODELS, {"pageSize": "x", "pageToken": "!!"})
    assert len(out["models"]) == 3 and "nextPageToken" not in out
    out = ANTHROPIC.listing(MODELS, {"limit": "0"})
    assert len(out["data"]) == 1
    assert json.dumps(out)


def test_each_shape_lists_only_what_its_api_serves() -> None:
    """Anthropic's list names Claude models only (/v1/messages serves no GPT), Google's Gemini only; OpenAI's all."""
    assert [m.id for m in served_in(ANTHROPIC, MODELS)] == ["claude-sonnet-4-5"]
    assert [m.id for m in served_in(GOOGLE, MODELS)] == ["gemini-2.5-flash"]
    assert served_in(OPENAI, MODELS) == MODELS


def test_openai_shape_answers_the_catalogs_own_list() -> None:
    """OpenAI-format clients get the catalog's list as `catalog.list_models` built it, `pricing` included."""
    catalog = {"object": "list", "data": [
        {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "openai", "pricing": "catalog"},
        {"id": "my-model", "object": "model", "created": 0, "owned_by": "anthropic", "pricing": "unpriced"},
    ]}
    models = listed(catalog)
    assert OPENAI.listing(served_in(OPENAI, models), {}) == catalog
    assert OPENAI.entry(find(models, "anthropic/my-model")) == catalog["data"][1]
