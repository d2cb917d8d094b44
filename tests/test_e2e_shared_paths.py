"""End to end: shared paths reach the asking SDK's provider, Azure deployments under the OpenAI prefix, passthrough
hygiene (client-only and key headers stay behind, uploads streamed and bounded by TOKENSENSE_MAX_UPLOAD_MB), and
`GET /v1/models` carrying the endpoint listing.

The mistralai SDKs are not a test dependency: their requests are made with httpx and the User-Agent the SDK sends
(`mistral-client-python/...`, set by its CustomUserAgentHook), which is what TokenSense reads.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import PROVIDER_KEYS, FakeProvider, Gateway, start_gateway, stop
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.e2e

AZURE_KEY = "azure-upstream-key"
MISTRAL_UA = "mistral-client-python/1.9.0"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("shared")
    config = tmp / "config.toml"
    config.write_text(f'''
[providers.azure]
base_url = "{fake_provider.url}/azure"
api_key_env = "AZURE_OPENAI_API_KEY"
deployments = {{ "prod-4o" = "gpt-4o", "embed" = "text-embedding-3-small" }}
''')
    gateway = start_gateway(
        tmp,
        fake_provider,
        extra_env={
            "TOKENSENSE_CONFIG_FILE": str(config),
            "AZURE_OPENAI_API_KEY": AZURE_KEY,
            "TOKENSENSE_MAX_BODY_MB": "1",
            "TOKENSENSE_MAX_UPLOAD_MB": "48",
        },
    )
    yield gateway
    stop(gateway.process)


@pytest.fixture
def exec_id() -> str:
    return f"exec-{uuid.uuid4().hex[:12]}"


def sent(gw: Gateway, exec_id: str) -> list[dict]:
    """What the fake received for this test: never with the TokenSense key."""
    requests = [r for r in gw.fake.requests() if (r.get("headers") or {}).get("x-execution-id") == exec_id]
    assert gw.key not in json.dumps(requests), "the TokenSense key must not reach the provider"
    return requests


def mistral_headers(gw: Gateway, exec_id: str) -> dict[str, str]:
    return {"authorization": f"Bearer {gw.key}", "user-agent": MISTRAL_UA, "x-execution-id": exec_id}


# --- 1. shared paths: the asking SDK's provider ---------------------------------------------------------------------


def test_mistral_sdk_on_shared_paths_reaches_mistral_never_openai(gw: Gateway, exec_id: str) -> None:
    headers = mistral_headers(gw, exec_id)
    uploaded = httpx.post(
        f"{gw.url}/v1/files",
        headers=headers,
        files={"file": ("train.jsonl", b'{"a": 1}\n')},
        data={"purpose": "fine-tune"},
        timeout=30,
    )
    assert uploaded.status_code == 200 and uploaded.json()["bytes"] == 9
    assert httpx.get(f"{gw.url}/v1/files", headers=headers, timeout=30).status_code == 200
    assert httpx.get(f"{gw.url}/v1/fine_tuning/jobs", headers=headers, timeout=30).json()["data"] == []
    httpx.get(f"{gw.url}/v1/batch/jobs", headers=headers, timeout=30)  # Mistral's alone
    requests = sent(gw, exec_id)
    assert [(r["method"], r["path"]) for r in requests] == [
        ("POST", "/mistral/v1/files"),
        ("GET", "/mistral/v1/files"),
        ("GET", "/mistral/v1/fine_tuning/jobs"),
        ("GET", "/mistral/v1/batch/jobs"),
    ]
    assert all(r["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['mistral']}" for r in requests)
    assert PROVIDER_KEYS["openai"] not in json.dumps(requests)
    records = gw.wait_records(4, execution_id=exec_id)
    assert {r["provider"] for r in records} == {"mistral"}
    # Files and batch jobs are served (owned per key, batch jobs metered); fine-tuning passes through.
    assert sorted(r["endpoint"] for r in records) == ["batches.list", "files.list", "files.upload", "fine_tuning"]


def test_openai_sdk_keeps_openai_and_an_unknown_client_is_told_the_prefixes(gw: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    assert client.fine_tuning.jobs.list().data == []
    client.files.list()
    assert [r["path"] for r in sent(gw, exec_id)] == ["/openai/v1/fine_tuning/jobs", "/openai/v1/files"]
    gw.fake.clear()
    curl = {"authorization": f"Bearer {gw.key}", "user-agent": "curl/8.5.0"}
    r = httpx.post(
        f"{gw.url}/v1/files", headers=curl, files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "batch"}, timeout=30
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "ambiguous_provider"
    message = r.json()["error"]["message"]
    assert "/openai/v1/files" in message and "/mistral/v1/files" in message and "/anthropic/v1/files" in message
    r = httpx.get(f"{gw.url}/v1/fine_tuning/jobs", headers=curl, timeout=30)
    assert r.status_code == 400 and "/mistral/v1/fine_tuning/jobs" in r.json()["error"]["message"]
    assert gw.fake.requests() == [], "a call whose provider cannot be told reaches no provider"


# --- 2. Azure deployments under the OpenAI prefix (Azure's v1 API) ------------------------------------------------


def test_azure_deployment_under_the_openai_prefix_is_served_by_azure(gw: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(
        base_url=f"{gw.url}/openai/v1", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    for model in ("prod-4o", "azure/prod-4o"):
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi there"}])
        assert answer.choices[0].message.content == "Hello from prod-4o."
    assert client.embeddings.create(model="embed", input="Hi there").usage.prompt_tokens == 2
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]).choices
    requests = sent(gw, exec_id)
    assert [(r["path"], r["body"]["model"]) for r in requests] == [
        ("/azure/openai/v1/chat/completions", "prod-4o"),
        ("/azure/openai/v1/chat/completions", "prod-4o"),
        ("/azure/openai/v1/embeddings", "embed"),
        ("/openai/v1/chat/completions", "gpt-4o-mini"),
    ]
    assert all(r["headers"]["api-key"] == AZURE_KEY and "authorization" not in r["headers"] for r in requests[:3])
    assert requests[3]["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    records = gw.wait_records(4, execution_id=exec_id)
    assert [(r["provider"], r["model"]) for r in records] == [
        ("azure", "gpt-4o"),
        ("azure", "gpt-4o"),
        ("azure", "text-embedding-3-small"),
        ("openai", "gpt-4o-mini"),
    ]
    assert all(r["cost_usd"] > 0 for r in records)


# --- 3. passthrough hygiene ------------------------------------------------------------------------------------------


def test_client_only_and_key_headers_never_pass_through(gw: Gateway, exec_id: str) -> None:
    headers = [
        ("authorization", f"Bearer {gw.key}"),
        ("x-execution-id", exec_id),
        ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
        ("cookie", "session=gateway-cookie"),
        ("X-Api-Key", "client-x-api-key"),
        ("X_Api_Key", "client-underscore-key"),
        ("Api-Key", "client-api-key"),
        ("x-goog-api-key", "client-goog-key"),
        ("X-Goog-Api-Key", "client-goog-key-2"),
    ]
    r = httpx.get(f"{gw.url}/openai/v1/vector_stores", headers=headers, timeout=30)
    assert r.status_code == 200
    [request] = sent(gw, exec_id)
    upstream = {k.lower() for k in request["headers"]}
    assert not upstream & {"proxy-authorization", "cookie", "x-api-key", "x_api_key", "api-key", "x-goog-api-key"}
    assert "client-" not in json.dumps(request) and "gateway-cookie" not in json.dumps(request)
    assert request["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def test_passthrough_upload_is_streamed_and_bounded_by_the_upload_limit(gw: Gateway, exec_id: str) -> None:
    """TOKENSENSE_MAX_BODY_MB=1 bounds JSON bodies; a passthrough upload may have TOKENSENSE_MAX_UPLOAD_MB (48)."""
    headers = mistral_headers(gw, exec_id)
    url = f"{gw.url}/mistral/v1/files"
    two = httpx.post(
        url, headers=headers, files={"file": ("a.jsonl", b"x" * (2 * MB))}, data={"purpose": "fine-tune"}, timeout=60
    )
    assert two.status_code == 200 and two.json()["bytes"] == 2 * MB  # over the JSON limit, under the upload one
    pid = gw.process.pid
    before = _rss_mb(pid)
    peak = [before]
    sending = threading.Event()
    sending.set()

    def watch() -> None:
        while sending.is_set():
            peak.append(_rss_mb(pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        big = httpx.post(
            url,
            headers=headers,
            files={"file": ("big.jsonl", io.BytesIO(b"y" * (40 * MB)))},
            data={"purpose": "fine-tune"},
            timeout=120,
        )
    finally:
        sending.clear()
        watcher.join()
    assert big.status_code == 200 and big.json()["bytes"] == 40 * MB
    assert max(peak) - before < 25, f"the gateway grew from {before:.0f} MB to {max(peak):.0f} MB"
    gw.fake.clear()
    declared = httpx.post(
        url,
        headers=headers,
        files={"file": ("huge.jsonl", b"z" * (49 * MB))},
        data={"purpose": "fine-tune"},
        timeout=120,
    )
    assert declared.status_code == 413 and "TOKENSENSE_MAX_UPLOAD_MB" in declared.json()["error"]["message"]
    assert gw.fake.requests() == []  # refused on its Content-Length: nothing was sent

    def chunks() -> Iterator[bytes]:
        for _ in range(49):
            yield b"w" * MB

    chunked = httpx.post(
        url, headers={**headers, "content-type": "application/octet-stream"}, content=chunks(), timeout=120
    )
    assert chunked.status_code == 413 and "TOKENSENSE_MAX_UPLOAD_MB" in chunked.json()["error"]["message"]
    json_body = httpx.post(f"{gw.url}/mistral/v1/agents", headers=headers, json={"x": "v" * (2 * MB)}, timeout=60)
    assert json_body.status_code == 413 and "TOKENSENSE_MAX_BODY_MB" in json_body.json()["error"]["message"]


# --- 4. GET /v1/models lists the endpoints too ---------------------------------------------------------------------


def test_model_list_carries_the_endpoint_listing(gw: Gateway) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0)
    models = client.models.list()
    assert "gpt-4o-mini" in {m.id for m in models.data}
    raw = httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {gw.key}"}, timeout=30).json()
    listing = raw["tokensense_endpoints"]
    mirror = httpx.get(
        f"{gw.url}/v1/tokensense/endpoints", headers={"authorization": f"Bearer {gw.key}"}, timeout=30
    ).json()
    assert listing == mirror
    pricing = {e["endpoint"]: e["pricing"] for e in listing["served"]}
    assert pricing["chat.completions"] == "priced" and pricing["moderations"] == "free"
    assert {"path": "/v1/vector_stores", "provider": "openai"}.items() <= next(
        p for p in listing["passthrough"] if p["path"] == "/v1/vector_stores"
    ).items()
    assert "/mistral" in {p["prefix"] for p in listing["prefixes"]}


# --- 5. realtime WebSocket handshakes under a prefix -----------------------------------------------------------------


def test_prefixed_realtime_handshake_works_like_the_unprefixed_one(gw: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(
        base_url=f"{gw.url}/openai/v1", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    with client.realtime.connect(model="gpt-realtime") as connection:
        assert connection.recv().type == "session.created"
        connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
        )
        connection.response.create()
        for event in connection:
            assert event.type != "error", event
            if event.type == "response.done":
                break
    [record] = gw.wait_records(execution_id=exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == ("openai", "gpt-realtime", "realtime")
    assert record["cost_usd"] > 0
    upstream = [r for r in sent(gw, exec_id) if r.get("transport") == "realtime"]
    assert upstream and upstream[0]["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    gw.fake.clear()  # the socket's frames are recorded without headers: other files' helpers read every request's
    mistral = openai.OpenAI(base_url=f"{gw.url}/mistral/v1", api_key=gw.key, max_retries=0)
    with pytest.raises(InvalidStatus) as refused, mistral.realtime.connect(model="gpt-realtime") as connection:
        connection.recv()  # pinned to Mistral: OpenAI's model is refused there (400 provider_mismatch)
    assert refused.value.response.status_code == 400 and b"provider_mismatch" in refused.value.response.body
