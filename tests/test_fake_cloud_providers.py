"""The fake's Bedrock, Vertex AI and Azure OpenAI formats, judged by the official clients pointed straight at it."""
# ruff: noqa: F811  (the fixtures imported from fakeprovider_fixture are used as test arguments)

from __future__ import annotations

import json

import anthropic
import botocore.exceptions
import openai
import pytest
from cloud_clients import (
    AWS_ACCESS_KEY,
    BEDROCK_CLAUDE,
    BEDROCK_NOVA,
    SERVICE_ACCOUNT_EMAIL,
    VERTEX_CLAUDE,
    VERTEX_GEMINI,
    bedrock_client,
    service_account_json,
)
from fakeprovider_fixture import fake_provider, fake_provider_url, fake_requests  # noqa: F401
from google import genai
from google.genai import types
from google.oauth2 import service_account

from tokensense.demo.fakeprovider.vertex_format import STATIC_TOKEN
from tokensense.providers.bedrock.eventstream import FrameReader, event_frame, exception_frame

WEATHER_SPEC = {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}}


# --- Bedrock -------------------------------------------------------------------------------


def test_boto3_converse_is_signed_verified_and_parsed(fake_provider):
    client = bedrock_client(fake_provider)
    answer = client.converse(modelId=BEDROCK_CLAUDE, messages=[{"role": "user", "content": [{"text": "Hi there"}]}],
                             system=[{"text": "Be brief"}], inferenceConfig={"maxTokens": 50})
    assert answer["output"]["message"]["content"][0]["text"] == f"Hello from {BEDROCK_CLAUDE}."
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"] == {"inputTokens": 4, "outputTokens": 3, "totalTokens": 7}
    [request] = fake_requests(fake_provider)
    assert request["provider"] == "bedrock"
    assert request["auth"] == f"sigv4:{AWS_ACCESS_KEY}:us-east-1:bedrock"
    assert request["path"] == f"/model/{BEDROCK_CLAUDE}/converse"


def test_boto3_converse_stream_frames(fake_provider):
    client = bedrock_client(fake_provider)
    response = client.converse_stream(modelId=BEDROCK_NOVA, messages=[{"role": "user", "content": [{"text": "One two three"}]}])
    events = list(response["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == f"Hello from {BEDROCK_NOVA}."
    assert [next(iter(e)) for e in events][:1] == ["messageStart"]
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"] == {"inputTokens": 3, "outputTokens": 3, "totalTokens": 6}


def test_boto3_converse_tool_call_stream(fake_provider):
    client = bedrock_client(fake_provider)
    response = client.converse_stream(modelId=BEDROCK_CLAUDE, messages=[{"role": "user", "content": [{"text": "Weather?"}]}],
                                      toolConfig={"tools": [WEATHER_SPEC], "toolChoice": {"any": {}}})
    events = list(response["stream"])
    start = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
    assert start["start"]["toolUse"]["name"] == "get_weather"
    arguments = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                        if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {}))
    assert json.loads(arguments) == {"location": "Paris"}
    assert any(e.get("messageStop", {}).get("stopReason") == "tool_use" for e in events)


def test_boto3_invoke_model_claude(fake_provider):
    client = bedrock_client(fake_provider)
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi there"}]}
    response = client.invoke_model(modelId=BEDROCK_CLAUDE, body=json.dumps(body))
    message = json.loads(response["body"].read())
    assert message["content"][0]["text"] == f"Hello from {BEDROCK_CLAUDE}."
    assert message["usage"]["input_tokens"] == 2
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-input-token-count"] == "2" and headers["x-amzn-bedrock-output-token-count"] == "3"


def test_boto3_invoke_model_with_response_stream(fake_provider):
    client = bedrock_client(fake_provider)
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi there"}]}
    response = client.invoke_model_with_response_stream(modelId=BEDROCK_CLAUDE, body=json.dumps(body))
    events = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == f"Hello from {BEDROCK_CLAUDE}."
    assert events[-1]["type"] == "message_stop"
    assert events[-1]["amazon-bedrock-invocationMetrics"]["inputTokenCount"] == 2
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 3


def test_bedrock_bad_signature_is_refused_like_aws(fake_provider):
    client = bedrock_client(fake_provider, aws_access_key_id=AWS_ACCESS_KEY, aws_secret_access_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.converse(modelId=BEDROCK_CLAUDE, messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_anthropic_bedrock_client_plain_and_streamed(fake_provider):
    client = anthropic.AnthropicBedrock(aws_access_key=AWS_ACCESS_KEY, aws_secret_key=bedrock_secret(),
                                        aws_region="us-east-1", base_url=fake_provider, max_retries=0)
    message = client.messages.create(model=BEDROCK_CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi there"}])
    assert message.content[0].text == f"Hello from {BEDROCK_CLAUDE}."
    with client.messages.stream(model=BEDROCK_CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi there"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == f"Hello from {BEDROCK_CLAUDE}." and final.usage.output_tokens == 3
    requests = fake_requests(fake_provider)
    assert [r["path"].rsplit("/", 1)[-1] for r in requests] == ["invoke", "invoke-with-response-stream"]
    assert all(r["auth"].startswith(f"sigv4:{AWS_ACCESS_KEY}") for r in requests)


def bedrock_secret() -> str:
    from cloud_clients import AWS_SECRET_KEY

    return AWS_SECRET_KEY


def test_frame_reader_reads_frames_split_anywhere():
    frames = event_frame("messageStart", {"role": "assistant"}) + exception_frame("throttlingException", "slow down")
    for cut in range(1, len(frames)):
        reader = FrameReader()
        got = reader.feed(frames[:cut]) + reader.feed(frames[cut:])
        assert [(f.message_type, f.event_type) for f in got] == [("event", "messageStart"), ("exception", "throttlingException")]
    corrupt = bytearray(frames)
    corrupt[20] ^= 0xFF  # inside the first frame's headers: its CRC no longer matches
    reader = FrameReader()
    assert reader.feed(bytes(corrupt)) == [] and reader.failed
    assert reader.feed(frames) == []  # boundaries are lost: nothing more is read


# --- Vertex AI -----------------------------------------------------------------------------


def test_google_genai_vertex_with_service_account(fake_provider):
    info = json.loads(service_account_json(f"{fake_provider}/token"))
    credentials = service_account.Credentials.from_service_account_info(
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"])
    client = genai.Client(vertexai=True, project="fake-project", location="us-central1", credentials=credentials,
                          http_options=types.HttpOptions(base_url=fake_provider))
    answer = client.models.generate_content(model=VERTEX_GEMINI, contents="Hi there")
    assert answer.text == f"Hello from {VERTEX_GEMINI}."
    assert answer.usage_metadata.prompt_token_count == 2
    streamed = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(model=VERTEX_GEMINI, contents="Hi there"))
    assert streamed == f"Hello from {VERTEX_GEMINI}."
    requests = [r for r in fake_requests(fake_provider) if r["provider"] == "vertex"]
    assert len(requests) == 2
    assert all(r["auth"] == f"oauth:{SERVICE_ACCOUNT_EMAIL}" for r in requests)
    assert requests[0]["path"].endswith(f"/projects/fake-project/locations/us-central1/publishers/google/models/{VERTEX_GEMINI}:generateContent")


def test_anthropic_vertex_client_plain_and_streamed(fake_provider):
    client = anthropic.AnthropicVertex(region="us-east5", project_id="fake-project", access_token=STATIC_TOKEN,
                                       base_url=f"{fake_provider}/v1", max_retries=0)
    message = client.messages.create(model=VERTEX_CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi there"}])
    assert message.content[0].text == f"Hello from {VERTEX_CLAUDE}."
    with client.messages.stream(model=VERTEX_CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi there"}]) as stream:
        assert "".join(stream.text_stream) == f"Hello from {VERTEX_CLAUDE}."
    paths = [r["path"] for r in fake_requests(fake_provider)]
    assert paths == [f"/v1/projects/fake-project/locations/us-east5/publishers/anthropic/models/{VERTEX_CLAUDE}:{a}"
                     for a in ("rawPredict", "streamRawPredict")]


def test_vertex_refuses_a_token_it_did_not_issue(fake_provider):
    client = anthropic.AnthropicVertex(region="us-east5", project_id="p", access_token="ya29.made-up",
                                       base_url=f"{fake_provider}/v1", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.create(model=VERTEX_CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])


# --- Azure OpenAI --------------------------------------------------------------------------


def test_azure_openai_client_on_deployment_paths(fake_provider):
    client = openai.AzureOpenAI(azure_endpoint=fake_provider, api_key="azure-test-key", api_version="2024-10-21", max_retries=0)
    answer = client.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "Hi there"}])
    assert answer.choices[0].message.content == "Hello from prod-4o."
    chunks = list(client.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "Hi there"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from prod-4o."
    assert chunks[-1].usage.prompt_tokens == 2
    embedding = client.embeddings.create(model="embed-small", input="Hi there")
    assert embedding.usage.prompt_tokens == 2
    requests = fake_requests(fake_provider)
    assert [r["path"] for r in requests] == ["/openai/deployments/prod-4o/chat/completions"] * 2 + \
        ["/openai/deployments/embed-small/embeddings"]
    assert all(r["provider"] == "azure" and r["auth"] == "api-key" and r["query"]["api-version"] == "2024-10-21"
               for r in requests)


def test_azure_v1_path_with_api_key(fake_provider):
    client = openai.OpenAI(base_url=f"{fake_provider}/openai/v1", api_key="unused",
                           default_headers={"api-key": "azure-test-key"}, max_retries=0)
    answer = client.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "Hi there"}])
    assert answer.choices[0].message.content == "Hello from prod-4o."
    [request] = fake_requests(fake_provider)
    assert request["provider"] == "azure" and request["path"] == "/openai/v1/chat/completions"
