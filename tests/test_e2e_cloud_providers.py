"""End to end through the gateway: Bedrock, Vertex AI, Azure OpenAI and config-declared OpenAI-compatible providers.

Each is called with its official client (boto3 bedrock-runtime, the anthropic SDK's
AnthropicBedrock and AnthropicVertex, google-genai with vertexai=True, the openai
SDK's AzureOpenAI and OpenAI) and checked three ways: the parsed answer, the request
the fake provider got (SigV4 verified by the fake with botocore, the OAuth bearer it
issued to the service account, the api-key), and the usage record with a cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import openai
import pytest
from cloud_clients import (
    AWS_ACCESS_KEY,
    AWS_SECRET_KEY,
    BEDROCK_CLAUDE,
    BEDROCK_NOVA,
    SERVICE_ACCOUNT_EMAIL,
    VERTEX_CLAUDE,
    VERTEX_GEMINI,
    bedrock_client,
    service_account_json,
)
from conftest import FakeProvider, Gateway, start_gateway, stop
from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials as OAuthCredentials

pytestmark = pytest.mark.e2e

AZURE_KEY = "azure-upstream-key"
DEEPSEEK_KEY = "ds-upstream-key"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("cloud")
    config = tmp / "config.toml"
    config.write_text(f'''
[providers.azure]
base_url = "{fake_provider.url}/azure"
api_key_env = "AZURE_OPENAI_API_KEY"
deployments = {{ "prod-4o" = "gpt-4o", "embed" = "text-embedding-3-small" }}

[providers.bedrock]
region = "us-east-1"

[providers.vertex]
project = "gateway-project"

[providers.deepseek]
format = "openai"
base_url = "{fake_provider.url}/deepseek"
api_key_env = "DEEPSEEK_API_KEY"
model_prefixes = ["deepseek-"]
responses = true

[providers.localllm]
base_url = "{fake_provider.url}/localllm"
api_key_env = "DEEPSEEK_API_KEY"
free = true
''')
    gw = start_gateway(tmp, fake_provider, extra_env={
        "TOKENSENSE_CONFIG_FILE": str(config),
        "TOKENSENSE_BEDROCK_BASE_URL": f"{fake_provider.url}/bedrock",
        "TOKENSENSE_BEDROCK_CREDENTIALS": f"{AWS_ACCESS_KEY}:{AWS_SECRET_KEY}",
        "TOKENSENSE_VERTEX_BASE_URL": f"{fake_provider.url}/vertex",
        "TOKENSENSE_VERTEX_CREDENTIALS": service_account_json(f"{fake_provider.url}/token"),
        "AZURE_OPENAI_API_KEY": AZURE_KEY,
        "DEEPSEEK_API_KEY": DEEPSEEK_KEY,
        "AWS_BEARER_TOKEN_BEDROCK": None,
    })
    yield gw
    stop(gw.process)


def _headers(request: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in request["headers"].items()}


def _upstream(gw: Gateway, prefix: str) -> dict:
    request = gw.fake.last(prefix)
    assert gw.key not in json.dumps(request)  # the TokenSense key never goes upstream
    return request


# --- AWS Bedrock ---------------------------------------------------------------------------


def _boto3(gw: Gateway, exec_id: str):
    # The TokenSense key as the access key id (botocore sends AWS_BEARER_TOKEN_BEDROCK over HTTPS only).
    client = bedrock_client(gw.url, aws_access_key_id=gw.key, aws_secret_access_key="anything")

    def add_execution_id(request, **_):
        request.headers["x-execution-id"] = exec_id

    client.meta.events.register("before-sign.bedrock-runtime.*", add_execution_id)
    return client


def test_bedrock_converse(cloud: Gateway, exec_id: str) -> None:
    client = _boto3(cloud, exec_id)
    answer = client.converse(modelId=BEDROCK_CLAUDE, messages=[{"role": "user", "content": [{"text": "Hi there"}]}])
    assert answer["output"]["message"]["content"][0]["text"] == f"Hello from {BEDROCK_CLAUDE}."
    request = _upstream(cloud, "bedrock")
    assert request["auth"] == f"sigv4:{AWS_ACCESS_KEY}:us-east-1:bedrock"  # re-signed with the gateway's keys
    assert request["path"] == f"/bedrock/model/{BEDROCK_CLAUDE}/converse"
    [record] = cloud.wait_records(execution_id=exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == ("bedrock", BEDROCK_CLAUDE, "bedrock")
    assert (record["input_tokens"], record["output_tokens"]) == (2, 3) and record["cost_usd"] > 0


def test_bedrock_converse_stream(cloud: Gateway, exec_id: str) -> None:
    client = _boto3(cloud, exec_id)
    response = client.converse_stream(modelId=BEDROCK_NOVA, messages=[{"role": "user", "content": [{"text": "a b c d e"}]}])
    events = list(response["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == f"Hello from {BEDROCK_NOVA}."
    assert events[-1]["metadata"]["usage"]["inputTokens"] == 5
    assert _upstream(cloud, "bedrock")["auth"].startswith(f"sigv4:{AWS_ACCESS_KEY}:")
    [record] = cloud.wait_records(execution_id=exec_id)
    assert record["stream"] == 1 and (record["input_tokens"], record["output_tokens"]) == (5, 3)
    assert record["cost_usd"] > 0 and record["ttft_ms"] is not None


def test_bedrock_invoke_model_and_stream(cloud: Gateway, exec_id: str) -> None:
    client = _boto3(cloud, exec_id)
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "Hi there friend"}]})
    message = json.loads(client.invoke_model(modelId=BEDROCK_CLAUDE, body=body)["body"].read())
    assert message["content"][0]["text"] == f"Hello from {BEDROCK_CLAUDE}."
    response = client.invoke_model_with_response_stream(modelId=BEDROCK_CLAUDE, body=body)
    events = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == f"Hello from {BEDROCK_CLAUDE}."
    records = cloud.wait_records(2, execution_id=exec_id)
    assert [r["stream"] for r in records] == [0, 1]
    assert all((r["input_tokens"], r["output_tokens"]) == (3, 3) and r["cost_usd"] > 0 for r in records)


def test_anthropic_bedrock_client(cloud: Gateway, exec_id: str) -> None:
    client = anthropic.AnthropicBedrock(api_key=cloud.key, aws_region="us-east-1", base_url=cloud.url, max_retries=0,
                                        default_headers={"x-execution-id": exec_id})
    message = client.messages.create(model=BEDROCK_CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi there"}])
    assert message.content[0].text == f"Hello from {BEDROCK_CLAUDE}."
    with client.messages.stream(model=BEDROCK_CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi there"}]) as stream:
        assert "".join(stream.text_stream) == f"Hello from {BEDROCK_CLAUDE}."
    records = cloud.wait_records(2, execution_id=exec_id)
    assert [r["stream"] for r in records] == [0, 1] and all(r["cost_usd"] > 0 for r in records)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_for_a_bedrock_model_via_converse(cloud: Gateway, exec_id: str, stream: bool) -> None:
    client = openai.OpenAI(base_url=f"{cloud.url}/v1", api_key=cloud.key, max_retries=0,
                           default_headers={"x-execution-id": exec_id})
    model = f"bedrock/{BEDROCK_NOVA}"
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi there"}]
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=messages, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.prompt_tokens == 4
    else:
        answer = client.chat.completions.create(model=model, messages=messages)
        text = answer.choices[0].message.content
        assert answer.usage.prompt_tokens == 4 and answer.choices[0].finish_reason == "stop"
    assert text == f"Hello from {BEDROCK_NOVA}."
    request = _upstream(cloud, "bedrock")
    assert request["path"].endswith("/converse-stream" if stream else "/converse")
    assert request["body"]["system"] == [{"text": "Be brief"}] and "model" not in request["body"]
    [record] = cloud.wait_records(execution_id=exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == ("bedrock", BEDROCK_NOVA, "chat.completions")
    assert record["input_tokens"] == 4 and record["cost_usd"] > 0


def test_bedrock_gateway_errors_are_aws_shaped(cloud: Gateway) -> None:
    import botocore.exceptions

    client = bedrock_client(cloud.url, aws_access_key_id="tsk_not_a_real_key", aws_secret_access_key="unused")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.converse(modelId=BEDROCK_CLAUDE, messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert "Unknown TokenSense key" in caught.value.response["Error"]["Message"]


# --- Vertex AI -----------------------------------------------------------------------------


def test_anthropic_vertex_client(cloud: Gateway, exec_id: str) -> None:
    client = anthropic.AnthropicVertex(region="us-east5", project_id="client-project", access_token=cloud.key,
                                       base_url=f"{cloud.url}/v1", max_retries=0, default_headers={"x-execution-id": exec_id})
    message = client.messages.create(model=VERTEX_CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi there"}])
    assert message.content[0].text == f"Hello from {VERTEX_CLAUDE}."
    with client.messages.stream(model=VERTEX_CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi there"}]) as stream:
        assert "".join(stream.text_stream) == f"Hello from {VERTEX_CLAUDE}."
    request = _upstream(cloud, "vertex")
    assert request["auth"] == f"oauth:{SERVICE_ACCOUNT_EMAIL}"  # a token google-auth got for the service account
    assert request["path"] == (f"/vertex/v1/projects/gateway-project/locations/us-east5/publishers/anthropic/models/"
                               f"{VERTEX_CLAUDE}:streamRawPredict")
    records = cloud.wait_records(2, execution_id=exec_id)
    assert [(r["provider"], r["model"], r["stream"]) for r in records] == [("vertex", VERTEX_CLAUDE, 0), ("vertex", VERTEX_CLAUDE, 1)]
    assert all(r["input_tokens"] == 2 and r["cost_usd"] > 0 for r in records)


def test_google_genai_vertex_client(cloud: Gateway, exec_id: str) -> None:
    client = genai.Client(vertexai=True, project="client-project", location="us-central1",
                          credentials=OAuthCredentials(cloud.key),
                          http_options=types.HttpOptions(base_url=cloud.url, headers={"x-execution-id": exec_id}))
    answer = client.models.generate_content(model=VERTEX_GEMINI, contents="Hi there")
    assert answer.text == f"Hello from {VERTEX_GEMINI}."
    streamed = "".join(c.text or "" for c in client.models.generate_content_stream(model=VERTEX_GEMINI, contents="Hi there"))
    assert streamed == f"Hello from {VERTEX_GEMINI}."
    request = _upstream(cloud, "vertex")
    assert request["auth"] == f"oauth:{SERVICE_ACCOUNT_EMAIL}"
    assert "/projects/gateway-project/locations/us-central1/publishers/google/models/" in request["path"]
    records = cloud.wait_records(2, execution_id=exec_id)
    assert [r["stream"] for r in records] == [0, 1]
    assert all(r["provider"] == "vertex" and r["input_tokens"] == 2 and r["cost_usd"] > 0 for r in records)


# --- Azure OpenAI --------------------------------------------------------------------------


def test_azure_openai_client(cloud: Gateway, exec_id: str) -> None:
    client = openai.AzureOpenAI(azure_endpoint=cloud.url, api_key=cloud.key, api_version="2024-10-21", max_retries=0,
                                default_headers={"x-execution-id": exec_id})
    answer = client.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "Hi there"}])
    assert answer.choices[0].message.content == "Hello from prod-4o."
    chunks = list(client.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "Hi there"}],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from prod-4o."
    assert all(c.usage is None for c in chunks)  # TokenSense asked for the usage chunk and kept it from the client
    embedding = client.embeddings.create(model="embed", input="Hi there")
    assert embedding.usage.prompt_tokens == 2
    request = _upstream(cloud, "azure")
    assert _headers(request)["api-key"] == AZURE_KEY and request["auth"] == "api-key"
    assert request["path"] == "/azure/openai/deployments/embed/embeddings" and request["query"]["api-version"] == "2024-10-21"
    records = cloud.wait_records(3, execution_id=exec_id)
    assert [(r["model"], r["endpoint"], r["stream"]) for r in records] == [
        ("gpt-4o", "chat.completions", 0), ("gpt-4o", "chat.completions", 1), ("text-embedding-3-small", "embeddings", 0)]
    assert all(r["provider"] == "azure" and r["input_tokens"] == 2 and r["cost_usd"] > 0 for r in records)


def test_openai_client_to_an_azure_deployment(cloud: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(base_url=f"{cloud.url}/v1", api_key=cloud.key, max_retries=0,
                           default_headers={"x-execution-id": exec_id})
    answer = client.chat.completions.create(model="azure/prod-4o", messages=[{"role": "user", "content": "Hi there"}])
    assert answer.choices[0].message.content == "Hello from prod-4o."
    request = _upstream(cloud, "azure")
    assert request["path"] == "/azure/openai/v1/chat/completions" and request["body"]["model"] == "prod-4o"
    [record] = cloud.wait_records(execution_id=exec_id)
    assert (record["provider"], record["model"]) == ("azure", "gpt-4o") and record["cost_usd"] > 0


# --- OpenAI-compatible providers declared in config.toml ---------------------------------------


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek/deepseek-chat"])
def test_a_configured_openai_compatible_provider(cloud: Gateway, exec_id: str, model: str) -> None:
    client = openai.OpenAI(base_url=f"{cloud.url}/v1", api_key=cloud.key, max_retries=0,
                           default_headers={"x-execution-id": exec_id})
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi there"}])
    assert answer.choices[0].message.content == "Hello from deepseek-chat."
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi there"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from deepseek-chat."
    assert all(c.usage is None for c in chunks)
    request = _upstream(cloud, "deepseek")
    assert _headers(request)["authorization"] == f"Bearer {DEEPSEEK_KEY}" and request["body"]["model"] == "deepseek-chat"
    assert request["body"]["stream_options"] == {"include_usage": True}
    records = cloud.wait_records(2, execution_id=exec_id)
    assert all((r["provider"], r["model"]) == ("deepseek", "deepseek-chat") and r["cost_usd"] > 0 for r in records)
    assert records[1]["stream"] == 1 and records[1]["input_tokens"] == 2


def test_the_responses_api_of_a_configured_provider(cloud: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(base_url=f"{cloud.url}/v1", api_key=cloud.key, max_retries=0,
                           default_headers={"x-execution-id": exec_id})
    response = client.responses.create(model="deepseek-chat", input="Hi there")
    assert response.output_text == "Hello from deepseek-chat."
    request = _upstream(cloud, "deepseek")
    assert request["path"] == "/deepseek/v1/responses" and _headers(request)["authorization"] == f"Bearer {DEEPSEEK_KEY}"
    [record] = cloud.wait_records(execution_id=exec_id)
    assert (record["provider"], record["endpoint"], record["input_tokens"]) == ("deepseek", "responses", 2)
    assert record["cost_usd"] > 0


def test_a_free_provider_and_the_model_list(cloud: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(base_url=f"{cloud.url}/v1", api_key=cloud.key, max_retries=0,
                           default_headers={"x-execution-id": exec_id})
    answer = client.chat.completions.create(model="localllm/llama3.1:8b", messages=[{"role": "user", "content": "Hi there"}])
    assert answer.choices[0].message.content == "Hello from llama3.1:8b."
    [record] = cloud.wait_records(execution_id=exec_id)
    assert (record["provider"], record["input_tokens"], record["cost_usd"]) == ("localllm", 2, 0)
    listed = {m.id: m for m in client.models.list()}
    assert {"deepseek-chat", "deepseek-reasoner", "azure/prod-4o", BEDROCK_NOVA, f"vertex/{VERTEX_GEMINI}"} <= set(listed)
    assert listed["azure/prod-4o"].pricing == listed[f"vertex/{VERTEX_GEMINI}"].pricing == "catalog"  # type: ignore[attr-defined]


def test_a_key_limited_to_one_provider(cloud: Gateway) -> None:
    created = json.loads(cloud.cli("keys", "create", "only-azure", "--allow-provider", "azure", "--json").stdout)
    client = openai.OpenAI(base_url=f"{cloud.url}/v1", api_key=created["key"], max_retries=0)
    assert client.chat.completions.create(model="azure/prod-4o", messages=[{"role": "user", "content": "Hi"}]).choices
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "Hi"}])
