"""Provider prefixes and the passthrough as functions: which route a path gets, which provider serves it, the
validated upstream path, how a call is paid for, and the policy refusals (end to end: test_e2e_passthrough.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from keyinfo import key_info

from tokensense.config import PassthroughConfig
from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.passthrough import (
    endpoint_listing,
    endpoint_refusal,
    parse_passthrough,
    passthrough_kind,
    unpriced_path_refusal,
)
from tokensense.gateway.routing import route_request
from tokensense.providers.passthrough import MAX_PATH, validated_path

key = key_info


@pytest.mark.parametrize(
    ("method", "path", "endpoint", "provider", "prefix", "upstream"),
    [
        # Known endpoints under a prefix: the usual route, pinned to the prefix's provider.
        ("POST", "/openai/v1/chat/completions", "chat.completions", "openai", "openai", None),
        ("POST", "/anthropic/v1/messages", "messages", "anthropic", "anthropic", None),
        ("POST", "/anthropic/v1/chat/completions", "chat.completions", "anthropic", "anthropic", None),
        ("POST", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", "gemini", "gemini", "gemini", None),
        ("POST", "/mistral/v1/fim/completions", "fim.completions", "mistral", "mistral", None),
        ("GET", "/openai/v1/models", "models", None, "openai", None),
        # Azure's own paths keep working: deployments as they are, its v1 API under its own prefix.
        ("POST", "/openai/deployments/prod-4o/chat/completions", "chat.completions", "azure", None, None),
        ("POST", "/azure/openai/v1/embeddings", "embeddings", "azure", "azure", None),
        # Paths no route serves: passed through.
        ("GET", "/openai/v1/vector_stores", "vector_stores", None, "openai", "/v1/vector_stores"),
        ("POST", "/anthropic/v1/files", "files", None, "anthropic", "/v1/files"),
        ("GET", "/v1/fine_tuning/jobs", "fine_tuning", None, None, "/v1/fine_tuning/jobs"),
        ("GET", "/v1beta/tunedModels/abc", "tunedModels", None, None, "/v1beta/tunedModels/abc"),
        # Batch jobs are routes (addons/batches.py: owned, reserved, booked), under a prefix too.
        ("POST", "/gemini/v1beta/batches/123:cancel", "batches.cancel", "gemini", "gemini", None),
        ("DELETE", "/mistral/v1/fine_tuning/jobs/ft-1", "fine_tuning", None, "mistral", "/v1/fine_tuning/jobs/ft-1"),
    ],
)
def test_route_request(
    method: str, path: str, endpoint: str, provider: str | None, prefix: str | None, upstream: str | None
) -> None:
    route = route_request(method, path)
    assert (route.endpoint.value, route.provider, route.prefix) == (endpoint, provider, prefix)
    assert (route.passthrough.path if route.passthrough else None) == upstream


def test_unlisted_families_are_named_only_once_a_key_is_admitted() -> None:
    from tokensense.providers.passthrough import OTHER, family_endpoint

    route = route_request("GET", "/openai/v1/organization_unlisted_x/usage")
    assert route.endpoint is OTHER and route.passthrough is not None
    assert route.passthrough.family == "organization_unlisted_x"
    assert family_endpoint("organization_unlisted_x").value == "organization_unlisted_x"


def test_shared_and_single_owner_paths() -> None:
    # POST /v1/files is OpenAI's upload (a route: batch files owned per key); the family's other paths stay shared.
    assert route_request("POST", "/v1/files").endpoint is Endpoint.FILES_UPLOAD
    files = route_request("POST", "/v1/files/file-abc").passthrough
    assert files is not None and set(files.providers) == {"openai", "anthropic", "mistral", "xai"}
    vector = route_request("GET", "/v1/vector_stores").passthrough
    assert vector is not None and vector.providers == ("openai",)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nothing/here"),
        ("GET", "/openai/x/y"),
        ("GET", "/v1/unknown_family"),
        ("GET", "/v1/messages"),
        ("POST", "/v1beta/models/gemini-2.5-flash:deleteFile"),
        ("GET", "/bedrock/v1/x"),
        ("GET", "/v1/../x"),
    ],
)
def test_paths_nothing_serves_are_404(method: str, path: str) -> None:
    with pytest.raises(GatewayError) as e:
        route_request(method, path)
    assert e.value.status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/openai/v1/../x",
        "/openai/v1/vector_stores/..",
        "/openai/v1/./x",
        "/openai/v1//evil.example",
        "/openai/v1/a%2Fb",
        "/openai/v1/%2e%2e",
        "/openai/v1/a\\b",
        "/openai/v1/x#y",
        "/openai/v1/x?y",
        "/openai/v1/" + "a" * (MAX_PATH + 1),
        "/openai/v1/" + "/".join("a" * 20),
        "/v1/vector_stores/%2e%2e",
    ],
)
def test_unsafe_passthrough_paths_are_400(path: str) -> None:
    with pytest.raises(GatewayError) as e:
        route_request("GET", path)
    assert e.value.status == 400 and e.value.code == "invalid_path"


@given(st.text(alphabet="ab./%\\:@#?-_~ \x00", max_size=40))
def test_a_validated_path_has_plain_segments_only(tail: str) -> None:
    try:
        segments = validated_path("/v1/" + tail)
    except GatewayError as e:
        assert e.status == 400
        return
    rebuilt = "/" + "/".join(segments)
    assert rebuilt == "/v1/" + tail and "//" not in rebuilt
    for segment in segments:
        assert segment not in ("", ".", "..") and not set(segment) & set("/%\\#? \x00")


def test_kind_of_a_call() -> None:
    config = PassthroughConfig(free=["vector_stores"], priced=["threads"])
    assert passthrough_kind(config, "GET", "fine_tuning") == "free"
    assert passthrough_kind(config, "DELETE", "files") == "free"
    assert passthrough_kind(config, "POST", "vector_stores") == "free"
    assert passthrough_kind(config, "POST", "threads") == "priced"
    assert passthrough_kind(config, "POST", "fine_tuning") == "unpriced"
    with pytest.raises(ValueError):
        PassthroughConfig(free=["../x"])


def test_parse_picks_the_provider_by_the_body_model_on_a_shared_path() -> None:
    config = PassthroughConfig()
    path = route_request("POST", "/v1/files/file-abc").passthrough
    assert path is not None
    parsed = parse_passthrough(config, "POST", path, "application/json", b'{"model": "mistral-small-latest"}')
    assert (parsed.provider.name, parsed.model, parsed.path.kind) == ("mistral", "mistral-small-latest", "unpriced")
    with pytest.raises(GatewayError) as e:
        parse_passthrough(config, "POST", path, "multipart/form-data; boundary=x", b"--x--")
    assert e.value.status == 400 and "/openai/v1/files" in e.value.message and "/anthropic/v1/files" in e.value.message
    with pytest.raises(GatewayError) as e:
        parse_passthrough(config, "POST", path, "application/json", b'{"model": "grok-4"')
    assert e.value.status == 400  # a broken JSON body


def test_refusals() -> None:
    path = route_request("POST", "/v1/fine_tuning/jobs").passthrough
    assert path is not None
    unpriced = path._replace(kind="unpriced")
    refusal = unpriced_path_refusal(key(budget_usd=5.0), "POST", unpriced)
    assert refusal is not None and refusal.status == 403 and "/v1/fine_tuning/jobs" in refusal.message
    assert unpriced_path_refusal(key(), "POST", unpriced) is None
    refusal = unpriced_path_refusal(key(), "POST", unpriced, budget="workflow `nightly`")  # a budget on attribution
    assert refusal is not None and refusal.status == 403 and "workflow `nightly`" in refusal.message
    assert unpriced_path_refusal(key(budget_usd=5.0), "GET", path._replace(kind="free")) is None
    limited = key(allowed_endpoints=("chat.completions", "vector_*"))
    assert endpoint_refusal(limited, Endpoint("vector_stores")) is None
    refused = endpoint_refusal(limited, Endpoint("fine_tuning"))
    assert refused is not None and refused.code == "endpoint_not_allowed" and "fine_tuning" in refused.message
    assert endpoint_refusal(key(), Endpoint("fine_tuning")) is None


def test_listing_shows_served_priced_free_and_passed_through() -> None:
    listing = endpoint_listing(PassthroughConfig(free=["vector_stores"]))
    served = {e["endpoint"]: e["pricing"] for e in listing["served"]}
    assert served["chat.completions"] == "priced" and served["messages.count_tokens"] == "free"
    passthrough = {(p["provider"], p["family"]): p["pricing"] for p in listing["passthrough"]}
    assert passthrough[("openai", "vector_stores")] == "free" and passthrough[("mistral", "agents")] == "unpriced"
    assert {p["provider"] for p in listing["prefixes"]} >= {"openai", "anthropic", "gemini", "mistral", "xai"}
