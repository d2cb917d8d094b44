"""Pure parts of the Bedrock, Vertex AI, Azure OpenAI and configured providers: paths, usage, prices, translation, config."""

from __future__ import annotations

import asyncio
import json

import pytest
from cloud_clients import AWS_ACCESS_KEY, AWS_SECRET_KEY, service_account_json
from fakeprovider_fixture import fake_provider, fake_provider_url  # noqa: F401
from pydantic import ValidationError

from tokensense.config import FileConfig
from tokensense.core.usage import TokenUsage
from tokensense.demo.fakeprovider import bedrock_format
from tokensense.demo.fakeprovider.textgen import NO_CONTROLS, Controls, plan_answer
from tokensense.metering.pricing import PriceBook
from tokensense.providers import azure, bedrock, vertex
from tokensense.providers.bedrock import converse
from tokensense.providers.bedrock.eventstream import EventStreamPassthrough, chunk_payload, event_frame, exception_frame
from tokensense.providers.bedrock.sigv4 import (
    AwsKeys,
    CredentialError,
    parse_credential,
    sign_headers,
    verify_signature,
)
from tokensense.providers.compatible import OpenAICompatibleProvider, configure_cloud_providers, configured_providers
from tokensense.providers.translation import TranslationError
from tokensense.providers.vertex.auth import VertexCredentialError, VertexTokenSource
from tokensense.settings import Settings

CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


# --- Bedrock paths, credentials, signing -------------------------------------------------------


def test_bedrock_native_paths_are_parsed_and_validated():
    assert bedrock.parse_native_path("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse") == (CLAUDE, "converse")
    assert bedrock.parse_native_path(f"/model/{CLAUDE}/invoke-with-response-stream") == (CLAUDE, "invoke-with-response-stream")
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert bedrock.parse_native_path("/model/" + arn.replace(":", "%3A").replace("/", "%2F") + "/converse") == (arn, "converse")
    for bad in ("/model/../converse", "/model/x/y/converse", "/model/%2E%2E/invoke", "/model/a%20b/invoke",
                "/model/claude/delete"):
        assert bedrock.parse_native_path(bad) is None, bad
    assert bedrock.upstream_path(CLAUDE, "converse") == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
    assert bedrock.upstream_path(arn, "invoke").count("/") == 3  # the ARN's slash is encoded, one segment
    with pytest.raises(ValueError):
        bedrock.upstream_path("../../x", "converse")
    assert bedrock.pricing_model(arn) == CLAUDE


def test_bedrock_owns_bedrock_model_ids_only():
    adapter = bedrock.BedrockAdapter(region="eu-west-1")
    for model in (CLAUDE, "anthropic.claude-3-5-haiku-20241022-v1:0", "amazon.nova-pro-v1:0", "meta.llama3-1-8b-instruct-v1:0",
                  "global.anthropic.claude-opus-4-6-v1:0"):
        assert adapter.owns_model(model), model
    for model in ("claude-sonnet-4-5", "gpt-4o", "mistral-large-latest", "openai/gpt-4o"):
        assert not adapter.owns_model(model), model
    assert adapter.regional_base_url == "https://bedrock-runtime.eu-west-1.amazonaws.com"


def test_bedrock_credential_formats():
    assert parse_credential("AKID:SECRET") == AwsKeys("AKID", "SECRET", None)
    assert parse_credential("AKID:SE:CRET:TOKEN") == AwsKeys("AKID", "SE", "CRET:TOKEN")
    assert parse_credential("ABSKQmVkcm9ja0FQSUtleQ==") == "ABSKQmVkcm9ja0FQSUtleQ=="
    with pytest.raises(CredentialError):
        parse_credential(":secret")


def test_bedrock_signs_what_the_fake_verifies_and_a_changed_body_fails():
    adapter = bedrock.BedrockAdapter(region="us-west-2")
    url = "https://bedrock-runtime.us-west-2.amazonaws.com" + bedrock.upstream_path(CLAUDE, "converse")
    headers = {"host": "bedrock-runtime.us-west-2.amazonaws.com", "content-type": "application/json"}
    added = adapter.sign(f"{AWS_ACCESS_KEY}:{AWS_SECRET_KEY}:session", method="POST", url=url, headers=headers, body=b'{"a":1}')
    assert added["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY}/")
    assert "/us-west-2/bedrock/aws4_request" in added["authorization"] and added["x-amz-security-token"] == "session"
    secrets = {AWS_ACCESS_KEY: AWS_SECRET_KEY}
    signed = verify_signature(method="POST", url=url, headers={**headers, **added}, body=b'{"a":1}', secrets=secrets)
    assert signed is not None and signed.region == "us-west-2"
    assert verify_signature(method="POST", url=url, headers={**headers, **added}, body=b'{"a":2}', secrets=secrets) is None
    assert adapter.sign("ABSKkey", method="POST", url=url, headers=headers, body=b"") == {"authorization": "Bearer ABSKkey"}
    adapter.chain._frozen = None
    with pytest.raises(LookupError):
        adapter.sign(None, method="POST", url=url, headers=headers, body=b"")


def test_sign_headers_never_includes_the_secret():
    added = sign_headers(AwsKeys("AKID", "very-secret-value"), method="POST", url="https://h/model/x/invoke",
                         headers={"host": "h"}, body=b"", region="us-east-1")
    assert "very-secret-value" not in json.dumps(added)


# --- Bedrock usage and streams ---------------------------------------------------------------


def test_bedrock_usage_from_bodies():
    assert bedrock.usage_from_body({"usage": {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 3,
                                              "cacheWriteInputTokens": 2}}) == \
        TokenUsage(input_tokens=15, output_tokens=5, cached_input_tokens=3, cache_write_tokens=2)
    assert bedrock.usage_from_body({"usage": {"input_tokens": 7, "output_tokens": 2, "cache_read_input_tokens": 1}}) == \
        TokenUsage(input_tokens=8, output_tokens=2, cached_input_tokens=1)
    assert bedrock.usage_from_headers({"x-amzn-bedrock-input-token-count": "9", "x-amzn-bedrock-output-token-count": "4"}) == \
        TokenUsage(input_tokens=9, output_tokens=4)
    assert bedrock.usage_from_body([1]) is None


def _fake_converse_frames(**controls) -> list[bytes]:
    from tokensense.demo.fakeprovider.bedrock_format import _converse_frames, converse_usage, read_converse

    conv = read_converse({"messages": [{"role": "user", "content": [{"text": "a b c d"}]}]}, CLAUDE)
    answer = plan_answer(conv, Controls(**controls) if controls else NO_CONTROLS)
    return _converse_frames(answer, converse_usage(conv, answer, Controls(**controls) if controls else NO_CONTROLS))


def test_stream_usage_from_converse_frames_passed_through_untouched():
    frames = _fake_converse_frames(cached_tokens=2)
    usage = bedrock.BedrockStreamUsage()
    ended = []
    passthrough = EventStreamPassthrough(usage.feed_frame, on_end=lambda: ended.append(True))
    raw = b"".join(frames)
    out = [passthrough(raw[i:i + 7]) for i in range(0, len(raw), 7)]
    assert b"".join(out) == raw  # never buffered: each piece goes on as it came
    passthrough(b"")
    assert ended == [True]
    assert usage.result() == TokenUsage(input_tokens=4, output_tokens=3, cached_input_tokens=2)


def test_stream_usage_from_invoke_chunks_prefers_anthropic_usage():
    usage = bedrock.BedrockStreamUsage()
    passthrough = EventStreamPassthrough(usage.feed_frame)
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "cache_read_input_tokens": 4, "output_tokens": 1}}},
        {"type": "message_delta", "usage": {"output_tokens": 9}},
        {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 5, "outputTokenCount": 9}},
    ]
    passthrough(b"".join(event_frame("chunk", chunk_payload(e)) for e in events))
    assert usage.result() == TokenUsage(input_tokens=9, output_tokens=9, cached_input_tokens=4)
    only_metrics = bedrock.BedrockStreamUsage()
    EventStreamPassthrough(only_metrics.feed_frame)(event_frame("chunk", chunk_payload(events[2])))
    assert only_metrics.result() == TokenUsage(input_tokens=5, output_tokens=9)
    failed = bedrock.BedrockStreamUsage()
    EventStreamPassthrough(failed.feed_frame)(exception_frame("throttlingException", "Too many requests"))
    assert failed.error == ("throttlingException", "Too many requests")


def test_bedrock_models_are_priced_from_the_aws_catalog():
    prices = PriceBook()
    usage = TokenUsage(input_tokens=1000, output_tokens=1000)
    for model in (CLAUDE, "anthropic.claude-3-5-haiku-20241022-v1:0", "amazon.nova-pro-v1:0", "meta.llama3-1-8b-instruct-v1:0"):
        assert prices.knows("aws", model), model
        assert prices.token_cost("aws", model, usage) > 0, model
    assert prices.token_cost("google", "claude-sonnet-4-5@20250929", usage) > 0
    assert prices.token_cost("azure", "gpt-4o", usage) > 0


# --- Converse translation --------------------------------------------------------------------


def test_openai_chat_to_converse_request():
    body = {
        "model": CLAUDE, "max_tokens": 100, "temperature": 0.2, "stop": "END",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "tooluse_1", "type": "function", "function": {"name": "look", "arguments": '{"x": 1}'}}]},
            {"role": "tool", "tool_call_id": "tooluse_1", "content": '{"seen": "a cat"}'},
        ],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
    }
    out = converse.chat_request_to_provider(body)
    assert out["system"] == [{"text": "Be brief"}]
    assert out["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.2, "stopSequences": ["END"]}
    assert out["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
    assert out["messages"][1] == {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "look", "input": {"x": 1}}}]}
    assert out["messages"][2]["content"] == [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"json": {"seen": "a cat"}}]}}]
    assert out["toolConfig"]["toolChoice"] == {"any": {}}
    assert "model" not in out


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]},
     "messages[0].content[0].image_url.url"),
])
def test_unmappable_requests_are_a_clear_400(extra, param):
    body = {"model": CLAUDE, "messages": [{"role": "user", "content": "Hi"}], **extra}
    with pytest.raises(TranslationError) as caught:
        converse.chat_request_to_provider(body)
    assert caught.value.param == param


def test_converse_answer_and_stream_to_openai():
    answer = converse.chat_response_from_provider({
        "output": {"message": {"role": "assistant", "content": [{"text": "Calling."}, {"toolUse": {"toolUseId": "t1", "name": "look", "input": {"x": 1}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 3, "outputTokens": 4, "cacheReadInputTokens": 2},
    }, model="bedrock/x")
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "look", "arguments": '{"x":1}'}
    assert answer["usage"]["prompt_tokens"] == 5 and answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 2

    ended: list[dict] = []
    stream = converse.TranslatingEventStream(converse.ChatStreamTranslator(model="m", include_usage=True), on_end=ended.append)
    raw = b"".join(_fake_converse_frames())
    sse = b"".join(bytes(b"".join(x) if isinstance(x, list) else x) for x in (stream(raw[:50]), stream(raw[50:]), stream(b"")))
    chunks = [json.loads(line[6:]) for line in sse.decode().split("\n\n") if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == f"Hello from {CLAUDE}."
    assert chunks[-1]["usage"]["prompt_tokens"] == 4 and chunks[-1]["choices"] == []
    assert sse.endswith(b"data: [DONE]\n\n") and ended == [{"inputTokens": 4, "outputTokens": 3, "totalTokens": 7}]


def test_converse_errors_become_openai_errors():
    assert converse.error_from_provider(429, b'{"message":"Too many tokens"}')["error"] == {
        "message": "Too many tokens", "type": "rate_limit_error", "param": None, "code": "rate_limit_error"}
    stream = converse.TranslatingEventStream(converse.ChatStreamTranslator(model="m", include_usage=False))
    out = stream(event_frame("messageStart", {"role": "assistant"}) + exception_frame("throttlingException", "slow"))
    assert b'"type":"throttlingException"' in out and b'"message":"slow"' in out


def test_fake_and_translator_agree_on_a_tool_call_stream():
    from tokensense.demo.fakeprovider.bedrock_format import _converse_frames, converse_usage, read_converse

    spec = {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}
    conv = read_converse({"messages": [{"role": "user", "content": [{"text": "Weather?"}]}], "toolConfig": {"tools": [spec]}}, CLAUDE)
    answer = plan_answer(conv, NO_CONTROLS, id_prefix="tooluse_")
    stream = converse.TranslatingEventStream(converse.ChatStreamTranslator(model="m", include_usage=False))
    sse = stream(b"".join(_converse_frames(answer, converse_usage(conv, answer, NO_CONTROLS)))) + stream(b"")
    chunks = [json.loads(line[6:]) for line in sse.decode().split("\n\n") if line.startswith("data: {")]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"].get("arguments") or "" for c in calls)) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# --- Vertex AI -------------------------------------------------------------------------------


def test_vertex_paths():
    parts = vertex.parse_native_path("/v1/projects/p1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict")
    assert parts is not None and parts.stream and parts.publisher == "anthropic"
    assert vertex.upstream_path(parts, project="mine") == \
        "/v1/projects/mine/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
    assert vertex.parse_native_path("/v1beta1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash:generateContent")
    for bad in ("/v1/projects/../locations/x/publishers/google/models/m:generateContent",
                "/v1/projects/p/locations/l/publishers/google/models/m:rawPredict",
                "/v1/projects/p/locations/l/publishers/meta/models/m:rawPredict"):
        assert vertex.parse_native_path(bad) is None, bad
    assert vertex.base_url_for("us-east5") == "https://us-east5-aiplatform.googleapis.com"
    assert vertex.base_url_for("global") == "https://aiplatform.googleapis.com"


def test_vertex_usage_gemini_and_claude():
    assert vertex.usage_from_body({"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}}) == \
        TokenUsage(input_tokens=3, output_tokens=2)
    assert vertex.usage_from_body({"usage": {"input_tokens": 3, "output_tokens": 2}}) == TokenUsage(input_tokens=3, output_tokens=2)
    collector = vertex.VertexStreamUsage()
    collector.feed("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 4, "output_tokens": 1}}})
    collector.feed("message_delta", {"type": "message_delta", "usage": {"output_tokens": 6}})
    assert collector.result() == TokenUsage(input_tokens=4, output_tokens=6)


async def test_vertex_token_is_fetched_off_the_loop_and_cached(fake_provider):  # noqa: F811
    source = VertexTokenSource(service_account_json(f"{fake_provider}/token"))
    assert source.current() is None and source.project_id == "fake-project"
    token = await source.token()
    assert token.startswith("ya29.fake-") and source.current() == token
    assert await source.token() == token  # cached until near expiry
    source._expires_at = 0  # expired: the next call refreshes
    assert await asyncio.wait_for(source.token(), 30) != token


def test_vertex_credential_errors_are_clear():
    with pytest.raises(VertexCredentialError, match="service-account"):
        VertexTokenSource('{"type": "authorized_user"}')
    with pytest.raises(VertexCredentialError, match="not valid JSON"):
        VertexTokenSource("{nope")
    assert VertexTokenSource("ya29.static").current() == "ya29.static"


# --- Azure OpenAI ----------------------------------------------------------------------------


def test_azure_paths_and_deployments():
    assert azure.parse_native_path("/openai/deployments/prod-4o/chat/completions") == azure.AzurePath("chat/completions", "prod-4o")
    assert azure.parse_native_path("/openai/v1/responses") == azure.AzurePath("responses", None)
    assert azure.parse_native_path("/openai/deployments/../chat/completions") is None
    assert azure.valid_api_version("2024-10-21") and azure.valid_api_version("2025-04-01-preview")
    assert not azure.valid_api_version("2024&x=1")
    adapter = azure.AzureOpenAIAdapter({"prod-4o": "gpt-4o"})
    assert adapter.model_for_deployment("prod-4o") == "gpt-4o" and adapter.model_for_deployment("gpt-4o-mini") == "gpt-4o-mini"
    assert adapter.auth_headers("k") == {"api-key": "k"}
    assert adapter.usage_from_body({"usage": {"prompt_tokens": 2, "completion_tokens": 1}}) == TokenUsage(input_tokens=2, output_tokens=1)


# --- Configured providers --------------------------------------------------------------------


def test_configured_openai_compatible_providers():
    config = FileConfig.model_validate({"providers": {
        "deepseek": {"base_url": "https://api.deepseek.com/", "api_key_env": "DEEPSEEK_API_KEY", "model_prefixes": ["deepseek-"]},
        "ollama": {"base_url": "http://127.0.0.1:11434", "free": True},
        "azure": {"base_url": "https://res.openai.azure.com", "deployments": {"prod-4o": "gpt-4o"}, "api_version": "2025-01-01-preview"},
        "bedrock": {"region": "eu-central-1"},
        "vertex": {"project": "proj", "location": "europe-west4"},
    }})
    providers = configured_providers(config)
    assert [p.name for p in providers] == ["deepseek", "ollama"]
    deepseek, ollama = providers
    assert isinstance(deepseek, OpenAICompatibleProvider)
    assert (deepseek.default_base_url, deepseek.env_key, deepseek.prices_id) == ("https://api.deepseek.com", "DEEPSEEK_API_KEY", "deepseek")
    assert deepseek.owns_model("deepseek-chat") and not ollama.owns_model("llama3")
    assert ollama.free and not ollama.requires_key and deepseek.requires_key
    assert PriceBook().token_cost(deepseek.prices_id, "deepseek-chat", TokenUsage(input_tokens=1000, output_tokens=10)) > 0
    cloud = {"azure": azure.AzureOpenAIAdapter(), "bedrock": bedrock.BedrockAdapter(), "vertex": vertex.VertexAdapter()}
    configure_cloud_providers(cloud, config)
    assert cloud["azure"].deployments == {"prod-4o": "gpt-4o"} and cloud["azure"].default_base_url == "https://res.openai.azure.com"
    assert cloud["azure"].api_version == "2025-01-01-preview"
    assert cloud["bedrock"].region == "eu-central-1" and cloud["vertex"].location == "europe-west4"
    assert azure.AzureOpenAIAdapter.default_base_url == "https://YOUR-RESOURCE.openai.azure.com"  # the class is untouched


@pytest.mark.parametrize("table, message", [
    ({"openai": {"base_url": "https://x"}}, "built in"),
    ({"Bad Name": {"base_url": "https://x"}}, "provider name"),
    ({"groq": {}}, "base_url is required"),
    ({"groq": {"base_url": "ftp://x"}}, "base_url must be"),
    ({"groq": {"base_url": "https://x", "api_key_env": "not a var"}}, "api_key_env"),
    ({"groq": {"base_url": "https://x", "format": "anthropic"}}, "format"),
    ({"groq": {"base_url": "https://x", "colour": "red"}}, "colour"),
    ({"a": {"base_url": "https://x", "model_prefixes": ["llama-"]}, "b": {"base_url": "https://y", "model_prefixes": ["llama-"]}},
     "already declared"),
])
def test_bad_provider_tables_are_clear_errors(table, message):
    with pytest.raises(ValidationError, match=message):
        FileConfig.model_validate({"providers": table})


def test_base_url_override_reads_the_environment_for_any_provider(monkeypatch):
    monkeypatch.setenv("TOKENSENSE_DEEP_SEEK_BASE_URL", "http://127.0.0.1:9/ds")
    monkeypatch.setenv("TOKENSENSE_BEDROCK_BASE_URL", "http://127.0.0.1:9/br")
    settings = Settings(openai_base_url="http://127.0.0.1:9/oa")
    assert settings.base_url_override("deep-seek") == "http://127.0.0.1:9/ds"
    assert settings.base_url_override("bedrock") == "http://127.0.0.1:9/br"
    assert settings.base_url_override("openai") == "http://127.0.0.1:9/oa"
    assert settings.base_url_override("groq") is None


def test_fake_bedrock_error_shape_names_the_exception():
    reply = bedrock_format.error(429, "Too many requests")
    assert reply.headers["x-amzn-ErrorType"].startswith("ThrottlingException:")
    assert json.loads(reply.body) == {"message": "Too many requests"}


def test_client_key_from_azure_and_aws_clients():
    from tokensense.gateway.auth import KEY_HEADERS, client_key

    assert client_key({"api-key": "tsk_azure"}, {}) == "tsk_azure"
    sigv4 = ("AWS4-HMAC-SHA256 Credential=tsk_abc123/20260101/us-east-1/bedrock/aws4_request, "
             "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)
    assert client_key({"authorization": sigv4}, {}) == "tsk_abc123"
    assert client_key({"authorization": "AWS4-HMAC-SHA256 garbage"}, {}) is None
    assert "api-key" in KEY_HEADERS  # removed before the request goes upstream


def test_gateway_routes_for_the_cloud_paths():
    from tokensense.core.endpoints import Endpoint
    from tokensense.core.errors import GatewayError, error_body
    from tokensense.gateway.routing import classify
    from tokensense.providers.anthropic import ANTHROPIC_ERRORS
    from tokensense.providers.bedrock import AWS_ERRORS

    route = classify("POST", "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream")
    assert (route.endpoint, route.provider, route.model, route.action) == (bedrock.NATIVE, "bedrock", CLAUDE, "converse-stream")
    assert route.fmt is AWS_ERRORS and route.stream and route.endpoint == "bedrock"  # the records' endpoint id
    route = classify("POST", "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict")
    assert (route.endpoint, route.model, route.fmt) == (vertex.NATIVE, None, ANTHROPIC_ERRORS)
    assert dict(route.params)["path_model"] == "count-tokens"
    route = classify("POST", "/openai/deployments/prod-4o/embeddings")
    assert (route.endpoint, route.provider, route.model) == (Endpoint.EMBEDDINGS, "azure", "prod-4o")
    for path in ("/model/../converse", "/openai/deployments/x/audio/speech", "/v1/projects/p/locations/l/publishers/x/models/m:rawPredict"):
        with pytest.raises(GatewayError):
            classify("POST", path)
    assert error_body(AWS_ERRORS, 429, "slow down") == {"__type": "ThrottlingException", "message": "slow down"}


def test_registry_and_intercept_hosts_of_configured_providers():
    from tokensense import providers
    from tokensense.gateway.intercept import HostTable
    from tokensense.providers.compatible import register_configured

    assert {"azure", "bedrock", "vertex"} <= set(providers.PROVIDERS)
    assert providers.get_provider("aws").name == "bedrock" and providers.get_provider("vertex-ai").name == "vertex"
    assert providers.provider_for_model(CLAUDE).name == "bedrock"
    assert providers.provider_for_model("claude-sonnet-4-5").name == "anthropic"
    saved = dict(providers.PROVIDERS)
    try:
        register_configured(FileConfig.model_validate({"providers": {"groq": {
            "base_url": "https://api.groq.com/openai", "api_key_env": "GROQ_API_KEY", "intercept_hosts": ["api.groq.com"]}}}))
        assert providers.get_provider("groq").default_base_url == "https://api.groq.com/openai"
        assert HostTable().provider("api.groq.com").name == "groq"
    finally:
        providers.PROVIDERS.clear()
        providers.PROVIDERS.update(saved)
