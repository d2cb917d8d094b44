"""End to end: provider prefixes (`/openai/v1`, `/anthropic`, `/NAME/v1` of config.toml) and the metered passthrough of
the paths no route serves, with the official SDKs as clients: answered as the provider answered, the provider's own
key upstream (never TokenSense's), one record each (cost 0 for listings, NULL when unpriced), policies held, and
hostile paths never leaving the provider's base URL."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import pytest
from conftest import PROVIDER_KEYS, STORED_ANTHROPIC_KEY, FakeProvider, Gateway, start_gateway, stop
from google import genai
from google.genai import types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

DEEPSEEK_KEY = "ds-upstream-key"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("passthrough")
    config = tmp / "config.toml"
    config.write_text(f'''
[passthrough]
free = ["vector_stores"]

[providers.deepseek]
base_url = "{fake_provider.url}/deepseek"
api_key_env = "DEEPSEEK_API_KEY"
model_prefixes = ["deepseek-"]
''')
    gateway = start_gateway(
        tmp, fake_provider, extra_env={"TOKENSENSE_CONFIG_FILE": str(config), "DEEPSEEK_API_KEY": DEEPSEEK_KEY}
    )
    yield gateway
    stop(gateway.process)


@pytest.fixture
def exec_id() -> str:
    return f"exec-{uuid.uuid4().hex[:12]}"


def new_key(gw: Gateway, *options: str) -> str:
    return json.loads(gw.cli("keys", "create", f"pt-{uuid.uuid4().hex[:8]}", *options, "--json").stdout)["key"]


def one_record(gw: Gateway, exec_id: str) -> dict:
    [record] = gw.wait_records(execution_id=exec_id)
    return record


def upstream(gw: Gateway, exec_id: str) -> dict:
    """The one request the fake received for this test: never with the TokenSense key."""
    [req] = [r for r in gw.fake.requests() if r["headers"].get("x-execution-id") == exec_id]
    assert gw.key not in json.dumps(req), "the TokenSense key must not reach the provider"
    return req


# --- prefixes: known endpoints pinned to the prefix's provider ------------------------------------------------------


def test_openai_prefix_serves_chat_as_usual(gw: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(
        base_url=f"{gw.url}/openai/v1", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi there"}])
    assert answer.choices[0].message.content
    req = upstream(gw, exec_id)
    assert (
        req["path"] == "/openai/v1/chat/completions"
        and req["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    )
    record = one_record(gw, exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == ("openai", "gpt-4o-mini", "chat.completions")
    assert record["cost_usd"] > 0


def test_anthropic_prefix_serves_messages_and_refuses_another_providers_model(gw: Gateway, exec_id: str) -> None:
    client = anthropic.Anthropic(
        base_url=f"{gw.url}/anthropic", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    message = client.messages.create(
        model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.content and upstream(gw, exec_id)["headers"]["x-api-key"] == STORED_ANTHROPIC_KEY
    record = one_record(gw, exec_id)
    assert (record["provider"], record["endpoint"]) == ("anthropic", "messages") and record["cost_usd"] > 0
    oai = openai.OpenAI(base_url=f"{gw.url}/anthropic/v1", api_key=gw.key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:  # pinned: `gpt-4o` is asked of Anthropic, which has no such model
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert "gpt-4o" in str(e.value)


def test_gemini_prefix_and_the_responses_api_under_the_openai_prefix(gw: Gateway, exec_id: str) -> None:
    gemini = genai.Client(
        api_key=gw.key,
        http_options=types.HttpOptions(
            base_url=f"{gw.url}/gemini", api_version="v1beta", headers={"x-execution-id": exec_id}
        ),
    )
    assert gemini.models.generate_content(model="gemini-2.5-flash", contents="Hi").text
    req = upstream(gw, exec_id)
    assert req["path"] == "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    assert req["headers"]["x-goog-api-key"] == PROVIDER_KEYS["gemini"]
    record = one_record(gw, exec_id)
    assert (record["provider"], record["endpoint"]) == ("gemini", "gemini") and record["cost_usd"] > 0
    other = f"exec-{uuid.uuid4().hex[:12]}"
    client = openai.OpenAI(
        base_url=f"{gw.url}/openai/v1", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": other}
    )
    assert client.responses.create(model="gpt-4o-mini", input="Hi").output_text
    record = one_record(gw, other)
    assert (record["provider"], record["endpoint"]) == ("openai", "responses") and record["cost_usd"] > 0


def test_configured_provider_has_a_prefix_too(gw: Gateway, exec_id: str) -> None:
    r = httpx.get(
        f"{gw.url}/deepseek/v1/vector_stores",
        timeout=30,
        headers={"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id},
    )
    assert r.status_code == 200 and r.json()["object"] == "list"
    req = upstream(gw, exec_id)
    assert req["path"] == "/deepseek/v1/vector_stores" and req["headers"]["authorization"] == f"Bearer {DEEPSEEK_KEY}"
    record = one_record(gw, exec_id)
    assert (record["provider"], record["endpoint"], record["cost_usd"]) == ("deepseek", "vector_stores", 0)


# --- the passthrough ---------------------------------------------------------------------------------------------------


def test_vector_stores_listed_under_the_openai_prefix(gw: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(
        base_url=f"{gw.url}/openai/v1", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    raw = client.vector_stores.with_raw_response.list()
    assert raw.parse().data == [] and raw.headers["x-tokensense-cost-usd"] == "0"
    req = upstream(gw, exec_id)
    assert (req["method"], req["path"]) == ("GET", "/openai/v1/vector_stores")
    assert req["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    record = one_record(gw, exec_id)
    assert (record["provider"], record["endpoint"], record["status"], record["cost_usd"]) == (
        "openai",
        "vector_stores",
        200,
        0,
    )
    assert record["key_name"] == "e2e" and record["project"] == "proj-default"


def test_anthropic_file_upload_is_unpriced(gw: Gateway, exec_id: str) -> None:
    client = anthropic.Anthropic(
        base_url=f"{gw.url}/anthropic", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    raw = client.beta.files.with_raw_response.upload(
        file=("notes.txt", b"hello from the passthrough", "text/plain"), betas=["files-api-2025-04-14"]
    )
    uploaded = raw.parse()
    assert uploaded.id.startswith("file_") and uploaded.size_bytes == len(b"hello from the passthrough")
    assert raw.headers["x-tokensense-cost-usd"] == "unpriced"
    req = upstream(gw, exec_id)
    assert (req["method"], req["path"]) == ("POST", "/anthropic/v1/files")
    assert req["headers"]["x-api-key"] == STORED_ANTHROPIC_KEY and "authorization" not in req["headers"]
    assert "files-api" in req["headers"]["anthropic-beta"]  # the client's own headers go as they were
    record = one_record(gw, exec_id)
    assert (record["provider"], record["endpoint"], record["status"]) == ("anthropic", "files", 200)
    assert record["cost_usd"] is None  # unpriced, never $0


def test_fine_tuning_jobs_without_a_prefix(gw: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    assert client.fine_tuning.jobs.list().data == []
    req = upstream(gw, exec_id)
    assert req["path"] == "/openai/v1/fine_tuning/jobs"
    assert req["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    record = one_record(gw, exec_id)
    assert (record["provider"], record["endpoint"], record["cost_usd"]) == ("openai", "fine_tuning", 0)


def test_streamed_passthrough_is_streamed_and_priced_from_its_usage(gw: Gateway, exec_id: str) -> None:
    client = openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    with pytest.warns(DeprecationWarning):  # the Assistants API is deprecated in the SDK, and still served
        stream = client.beta.threads.create_and_run(assistant_id="asst_1", model="gpt-4o-mini", stream=True)
    events = [event.event for event in stream]
    assert events == ["thread.created", "thread.run.created", "thread.run.completed"]
    req = upstream(gw, exec_id)
    assert req["path"] == "/openai/v1/threads/runs" and req["body"]["stream"] is True
    record = one_record(gw, exec_id)
    assert (record["endpoint"], record["model"], record["stream"]) == ("threads", "gpt-4o-mini", 1)
    assert (record["input_tokens"], record["output_tokens"]) == (12, 8)
    # gpt-4o-mini: $0.15 / 1M input, $0.60 / 1M output (genai-prices)
    assert record["cost_usd"] == pytest.approx(12 * 0.15e-6 + 8 * 0.6e-6, abs=1e-9)


def test_download_is_streamed_through_unchanged(gw: Gateway, exec_id: str) -> None:
    size = 5 * 1024 * 1024
    headers = {"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id, "x-fake-bytes": str(size)}
    url = f"{gw.url}/openai/v1/containers/cntr_1/files/cfile_1/content"
    with httpx.stream("GET", url, headers=headers, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        body = b"".join(r.iter_bytes())
    assert len(body) == size and body.startswith(b"cntr_1/cfile_1\n")
    assert upstream(gw, exec_id)["path"] == "/openai/v1/containers/cntr_1/files/cfile_1/content"
    record = one_record(gw, exec_id)
    assert (record["endpoint"], record["status"], record["cost_usd"]) == ("containers", 200, 0)


def test_provider_errors_are_answered_as_the_provider_answered(gw: Gateway, exec_id: str) -> None:
    r = httpx.post(
        f"{gw.url}/v1/fine_tuning/jobs",
        json={"model": "gpt-4o-mini", "training_file": "file-x"},
        headers={"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id},
        timeout=30,
    )
    assert r.status_code == 405  # the fake serves GET only there
    record = one_record(gw, exec_id)
    assert (record["endpoint"], record["status"], record["model"]) == ("fine_tuning", 405, "gpt-4o-mini")
    other = f"exec-{uuid.uuid4().hex[:12]}"
    r = httpx.get(
        f"{gw.url}/openai/v1/organization/projects",
        headers={"authorization": f"Bearer {gw.key}", "x-execution-id": other},
        timeout=30,
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"  # the fake's own 404
    record = one_record(gw, other)
    assert (record["provider"], record["endpoint"], record["status"]) == ("openai", "organization", 404)


def test_shared_path_needs_a_model_or_a_prefix(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.url}/v1/files/file-abc",  # POST /v1/files itself is OpenAI's upload route (batch files)
        files={"file": ("a.jsonl", b"{}\n")},
        data={"purpose": "batch"},
        headers={"authorization": f"Bearer {gw.key}"},
        timeout=30,
    )
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "ambiguous_provider"
    assert "/openai/v1/files" in message and "/anthropic/v1/files" in message and "/mistral/v1/files" in message


# --- policy ----------------------------------------------------------------------------------------------------------


def test_budgeted_key_is_refused_an_unpriced_path_but_not_a_free_one(gw: Gateway) -> None:
    key = new_key(gw, "--budget-usd", "5")
    gw.fake.clear()
    r = httpx.post(
        f"{gw.url}/v1/fine_tuning/jobs",
        json={"training_file": "file-abc"},
        timeout=30,
        headers={"authorization": f"Bearer {key}", "user-agent": "OpenAI/Python 1.99.0"},  # Mistral has it too
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "path_unpriced"
    assert "/v1/fine_tuning/jobs" in r.json()["error"]["message"]
    assert gw.fake.requests() == [], "a refused call must not reach the provider"
    client = openai.OpenAI(base_url=f"{gw.url}/openai/v1", api_key=key, max_retries=0)
    assert client.fine_tuning.jobs.list().data == []  # GET listings are free
    created = client.vector_stores.create(name="docs")  # config.toml: [passthrough] free = ["vector_stores"]
    assert created.id.startswith("vs_")
    assert client.vector_stores.delete(created.id).deleted  # deletions are free


def test_capped_key_is_refused_a_path_whose_cost_cannot_be_bounded(gw: Gateway) -> None:
    key = new_key(gw, "--max-call-usd", "0.5")
    headers = {"authorization": f"Bearer {key}"}
    r = httpx.post(f"{gw.url}/anthropic/v1/files", files={"file": ("a.txt", b"hi")}, headers=headers, timeout=30)
    assert r.status_code == 402 and r.json()["error"]["type"] == "billing_error"
    assert "/v1/files" in r.json()["error"]["message"]
    assert httpx.get(f"{gw.url}/anthropic/v1/files", headers=headers, timeout=30).status_code == 200


def test_key_limited_to_endpoints(gw: Gateway) -> None:
    key = new_key(gw, "--allow-endpoint", "chat.completions", "--allow-endpoint", "vector_*")
    client = openai.OpenAI(base_url=f"{gw.url}/openai/v1", api_key=key, max_retries=0)
    assert client.vector_stores.list().data == []
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.fine_tuning.jobs.list()
    assert e.value.code == "endpoint_not_allowed" and "fine_tuning" in str(e.value)
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model="text-embedding-3-small", input="hi")


def test_rate_limit_holds_on_the_passthrough(gw: Gateway) -> None:
    key = new_key(gw, "--rpm", "2")
    headers = {"authorization": f"Bearer {key}"}
    codes = [httpx.get(f"{gw.url}/openai/v1/vector_stores", headers=headers, timeout=30).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_body_limit_holds_on_the_passthrough(gw: Gateway) -> None:
    big = (
        b"x" * (int(gw.env.get("TOKENSENSE_MAX_BODY_MB", "0") or 0) * 1024 * 1024 + 1)
        if gw.env.get("TOKENSENSE_MAX_BODY_MB")
        else b"x" * (33 * 1024 * 1024)
    )
    r = httpx.post(
        f"{gw.url}/openai/v1/vector_stores",
        content=big,
        timeout=60,
        headers={"authorization": f"Bearer {gw.key}", "content-type": "application/json"},
    )
    assert r.status_code == 413


# --- hostile paths -----------------------------------------------------------------------------------------------------


def raw_get(gw: Gateway, path: str, method: str = "GET") -> int:
    """`method path` byte for byte (httpx would normalise dot segments)."""
    parts = urlsplit(gw.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", parts.netloc)
        conn.putheader("Authorization", f"Bearer {gw.key}")
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


PREFIXES = ("/openai/", "/anthropic/", "/gemini/", "/xai/", "/mistral/", "/deepseek/")


def assert_stayed_home(gw: Gateway) -> None:
    """Every request the fake got is under a provider's base URL, with a plain path."""
    for req in gw.fake.requests():
        path = req["path"]
        assert path.startswith(PREFIXES), path
        assert "/../" not in path + "/" and "/./" not in path + "/" and "//" not in path and "%" not in path, path
        assert "\\" not in path and "@" not in path.split("/")[1], path


NAMED_HOSTILE = [
    "/openai/v1/../../etc/passwd",
    "/openai/v1/vector_stores/../../admin",
    "/v1/vector_stores/..",
    "/openai/v1/%2e%2e/%2e%2e/x",
    "/openai/v1/vector_stores%2F..%2F..%2Fx",
    "/openai/v1/a%2Fb",
    "/openai//evil.example/v1/x",
    "/openai/v1//evil.example/x",
    "//evil.example/v1/vector_stores",
    "/openai/v1/\\evil.example\\x",
    "/openai/http://evil.example/v1/x",
    "/openai/v1/vector_stores/" + "a" * 5000,
    "/openai/v1/" + "/".join(["a"] * 40),
    "/anthropic/v1/files/..%2f..%2f",
    "/gemini/v1beta/../../x",
    "/openai/v1/vector_stores/%00",
    "/openai/v1/vector_stores/x#frag",
]


def test_absolute_form_target_and_host_header_do_not_choose_the_host(gw: Gateway) -> None:
    gw.fake.clear()
    parts = urlsplit(gw.url)
    for target, host in (
        ("http://evil.example/openai/v1/vector_stores", "evil.example"),
        ("/openai/v1/vector_stores", "evil.example"),
    ):
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        try:
            conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            conn.putheader("Authorization", f"Bearer {gw.key}")
            conn.endheaders()
            response = conn.getresponse()
            response.read()
            assert response.status in (200, 400, 404)
        finally:
            conn.close()
    assert_stayed_home(gw)
    assert all(r["headers"].get("host") == urlsplit(gw.fake.url).netloc for r in gw.fake.requests())


@pytest.mark.parametrize("path", NAMED_HOSTILE)
def test_named_hostile_paths_never_leave_the_base_url(gw: Gateway, path: str) -> None:
    gw.fake.clear()
    status = raw_get(gw, path)
    assert status in (400, 404, 414, 431) or status < 300, status
    assert_stayed_home(gw)


SEGMENT = st.one_of(
    st.sampled_from(
        ["..", ".", "", "%2e%2e", "%2F", "%252F", "\\", "evil.example", "v1", "@x", "vector_stores", "http:", "a:b"]
    ),
    st.text(alphabet="abc.%/\\:@-_", min_size=1, max_size=8),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(["/openai/v1/", "/anthropic/v1/", "/gemini/v1beta/", "/v1/vector_stores/", "/v1/"]),
    segments=st.lists(SEGMENT, min_size=1, max_size=6),
    method=st.sampled_from(["GET", "DELETE", "POST", "PATCH"]),
)
def test_generated_hostile_paths_never_leave_the_base_url(
    gw: Gateway, prefix: str, segments: list[str], method: str
) -> None:
    gw.fake.clear()
    status = raw_get(gw, prefix + "/".join(segments), method)
    assert status != 500
    assert_stayed_home(gw)


# --- listed --------------------------------------------------------------------------------------------------------------


def test_endpoints_listing_and_usage_by_endpoint(gw: Gateway, exec_id: str) -> None:
    listing = httpx.get(
        f"{gw.url}/v1/tokensense/endpoints", headers={"authorization": f"Bearer {gw.key}"}, timeout=30
    ).json()
    served = {e["endpoint"]: e for e in listing["served"]}
    assert served["chat.completions"]["pricing"] == "priced" and served["moderations"]["pricing"] == "free"
    passthrough = {(p["provider"], p["family"]): p["pricing"] for p in listing["passthrough"]}
    assert passthrough[("openai", "vector_stores")] == "free"  # [passthrough] free in config.toml
    assert passthrough[("openai", "fine_tuning")] == "unpriced" and passthrough[("mistral", "agents")] == "unpriced"
    assert {p["provider"] for p in listing["prefixes"]} >= {
        "openai",
        "anthropic",
        "gemini",
        "mistral",
        "xai",
        "deepseek",
    }
    httpx.get(f"{gw.url}/openai/v1/vector_stores", headers={"authorization": f"Bearer {gw.key}"}, timeout=30)
    gw.wait_records(endpoint="vector_stores")
    groups = json.loads(gw.cli("usage", "--by", "endpoint", "--json").stdout)
    by_endpoint = {g["endpoint"]: g for g in groups}
    assert by_endpoint["vector_stores"]["cost_usd"] == 0 and not by_endpoint["vector_stores"].get("unpriced")
    httpx.post(
        f"{gw.url}/anthropic/v1/files",
        files={"file": ("b.txt", b"x")},
        timeout=30,
        headers={"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id},
    )
    gw.wait_records(execution_id=exec_id)
    text = gw.cli("usage", "--by", "endpoint").stdout
    [files_line] = [line for line in text.splitlines() if line.startswith("files ")]
    assert "unpriced" in files_line  # passed through unpriced: on its own line, counted apart from the total
