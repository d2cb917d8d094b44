"""End to end: TokenSense as an HTTPS_PROXY for httpx, TLS passthrough for other hosts, recording, reprice, replay."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import (
    BIN,
    ENV_KEYS,
    PROVIDER_KEYS,
    FakeProvider,
    Gateway,
    clean_env,
    free_port,
    start_fake_provider,
    stop,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

pytestmark = pytest.mark.e2e

PROVIDER_NAMES = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com", "api.x.ai",
                  "api.mistral.ai", "fal.run")
OTHER_HOST = "example.test"
# The keys the intercepted clients send themselves; none may be in a recording.
CLIENT_OPENAI_KEY = "sk-client-own-openai-0123456789"
CLIENT_ANTHROPIC_KEY = "sk-ant-client-own-0123456789"
CLIENT_GEMINI_KEY = "AIza-client-own-gemini-0123456789"
WRONG_TOKENSENSE_KEY = "tsk_wrong_key_never_issued_0123456789"


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the provider names, example.test and 127.0.0.1 (its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TokenSense test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in (*PROVIDER_NAMES, OTHER_HOST, "localhost")]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "upstream-cert.pem", folder / "upstream-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@dataclass
class InterceptGateway:
    gateway: Gateway
    proxy_url: str
    ca_file: Path
    record_file: Path
    fake: FakeProvider
    other: FakeProvider
    upstream_cert: Path
    save_file: Path | None = None

    def client(self, **kwargs) -> httpx.Client:
        """An httpx client that uses the intercept proxy and trusts only mitmproxy's CA."""
        return httpx.Client(proxy=self.proxy_url, verify=ssl.create_default_context(cafile=str(self.ca_file)),
                            timeout=20, **kwargs)

    def stop(self) -> None:
        """Stop the gateway cleanly (SIGTERM): the recording is complete afterwards."""
        stop(self.gateway.process)


def start_intercept_gateway(tmp: Path, fake: FakeProvider, other: FakeProvider, upstream_cert: Path, *,
                            require_key: bool = False, redact_bodies: bool = False,
                            save_file: Path | None = None) -> InterceptGateway:
    home = tmp / "home"
    confdir = tmp / "mitmproxy"
    record_file = tmp / "calls.flows"
    env = clean_env()
    env["TOKENSENSE_HOME"] = str(home)
    env["TOKENSENSE_UPSTREAM_TIMEOUT"] = "5"
    env["TOKENSENSE_FLUSH_INTERVAL"] = "0.05"
    for provider in ("openai", "anthropic", "gemini", "xai", "mistral", "fal"):
        env[f"TOKENSENSE_{provider.upper()}_BASE_URL"] = f"{fake.url}/{provider}"
    for provider, var in ENV_KEYS.items():
        env[var] = PROVIDER_KEYS[provider]
    env["ANTHROPIC_API_KEY"] = "sk-ant-env-key-of-the-gateway"
    pre = Gateway(url="", home=home, env=env, process=None, key="", fake=fake, log_path=tmp / "gateway.log")  # type: ignore[arg-type]
    created = json.loads(pre.cli("keys", "create", "e2e", "--project", "proj-default", "--json").stdout)
    port, proxy_port = free_port(), free_port()
    fake_port, other_port = fake.url.rsplit(":", 1)[1], other.url.rsplit(":", 1)[1]
    command = [str(BIN / "tokensense"), "serve", "--port", str(port), "--intercept", "--intercept-port",
               str(proxy_port), "--record", str(record_file)]
    if redact_bodies:
        command.append("--redact-bodies")
    command += ["--", "--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={upstream_cert}"]
    for host in PROVIDER_NAMES:
        command += ["--set", f"tokensense_intercept_hostmap={host}=127.0.0.1:{fake_port}"]
    command += ["--set", f"tokensense_intercept_hostmap={OTHER_HOST}=127.0.0.1:{other_port}"]
    if require_key:
        command += ["--set", "tokensense_intercept_require_key=true"]
    if save_file is not None:
        command += ["-w", str(save_file)]
    log = pre.log_path.open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    ca_file = confdir / "mitmproxy-ca-cert.pem"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200 and ca_file.exists():
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"gateway did not start:\n{pre.log_path.read_text()}")
        time.sleep(0.1)
    gateway = Gateway(url=url, home=home, env=env, process=proc, key=created["key"], fake=fake, log_path=pre.log_path)
    return InterceptGateway(gateway, f"http://127.0.0.1:{proxy_port}", ca_file, record_file, fake, other,
                            upstream_cert, save_file)


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeProvider, FakeProvider, Path]]:
    """Two fake providers serving TLS on loopback: one under the provider names, one as example.test."""
    cert, key = make_certificate(tmp_path_factory.mktemp("certs"))
    fake = start_fake_provider(["--tls-cert", str(cert), "--tls-key", str(key)])
    other = start_fake_provider(["--tls-cert", str(cert), "--tls-key", str(key)])
    yield fake, other, cert
    stop(fake.process)
    stop(other.process)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstreams) -> Iterator[InterceptGateway]:
    fake, other, cert = upstreams
    gw = start_intercept_gateway(tmp_path_factory.mktemp("intercept"), fake, other, cert)
    yield gw
    gw.stop()


def fake_requests(fake: FakeProvider) -> list[dict]:
    return httpx.get(f"{fake.url}/_fake/requests", verify=False, timeout=10).json()


def last_request(fake: FakeProvider, execution_id: str) -> dict:
    found = [r for r in fake_requests(fake) if r["headers"].get("x-execution-id") == execution_id]
    assert found, f"the fake provider did not receive the request {execution_id}"
    return found[-1]


def new_exec() -> str:
    return f"exec-{uuid.uuid4().hex[:12]}"


def peer_certificate(response: httpx.Response) -> x509.Certificate:
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    return x509.load_der_x509_certificate(ssl_object.getpeercert(True))


def test_provider_call_is_metered_with_the_clients_own_key(proxy: InterceptGateway) -> None:
    exec_id = new_exec()
    with proxy.client() as client:
        response = client.post(
            "https://api.openai.com/v1/chat/completions",
            headers={"authorization": f"Bearer {CLIENT_OPENAI_KEY}", "x-workflow-tag": "wf-intercept",
                     "x-step": "ask", "x-execution-id": exec_id, "x-source": "httpx", "x-project": "proj-x"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello over the proxy"}]},
        )
        # The client talked TLS to mitmproxy (it trusts only mitmproxy's CA), not to the upstream.
        assert "mitmproxy" in peer_certificate(response).issuer.rfc4514_string()
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 4
    upstream = last_request(proxy.fake, exec_id)
    assert upstream["headers"]["authorization"] == f"Bearer {CLIENT_OPENAI_KEY}"
    assert upstream["headers"]["host"] == "api.openai.com"
    assert upstream["path"] == "/v1/chat/completions"
    [record] = proxy.gateway.wait_records(execution_id=exec_id)
    assert (record["provider"], record["model"], record["endpoint"], record["status"]) == \
        ("openai", "gpt-4o-mini", "chat.completions", 200)
    assert (record["workflow"], record["step"], record["source"], record["project"]) == \
        ("wf-intercept", "ask", "httpx", "proj-x")
    assert record["input_tokens"] == 4 and record["output_tokens"] > 0 and record["cost_usd"] > 0
    assert record["key_name"] is None
    assert response.headers["x-tokensense-request-id"] == record["request_id"]


def test_streamed_call_gets_usage_without_the_client_seeing_the_extra_chunk(proxy: InterceptGateway) -> None:
    exec_id = new_exec()
    with proxy.client() as client, client.stream(
        "POST", "https://api.openai.com/v1/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_OPENAI_KEY}", "x-workflow-tag": "wf-intercept",
                 "x-execution-id": exec_id},
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "stream it"}]},
    ) as response:
        body = response.read().decode()
    chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    assert chunks and all(chunk["choices"] for chunk in chunks)
    assert last_request(proxy.fake, exec_id)["body"]["stream_options"] == {"include_usage": True}
    [record] = proxy.gateway.wait_records(execution_id=exec_id)
    assert record["stream"] == 1 and record["input_tokens"] == 2 and record["output_tokens"] > 0
    assert record["cost_usd"] > 0


def test_anthropic_and_gemini_native_calls(proxy: InterceptGateway) -> None:
    exec_id = new_exec()
    with proxy.client() as client:
        messages = client.post(
            "https://api.anthropic.com/v1/messages",
            headers={"x-api-key": CLIENT_ANTHROPIC_KEY, "anthropic-version": "2023-06-01",
                     "x-workflow-tag": "wf-native", "x-execution-id": exec_id},
            json={"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
                  "messages": [{"role": "user", "content": "three words here"}]},
        )
        gemini = client.post(
            f"https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent"
            f"?alt=sse&key={CLIENT_GEMINI_KEY}",
            headers={"x-workflow-tag": "wf-native", "x-execution-id": exec_id},
            json={"contents": [{"role": "user", "parts": [{"text": "one two"}]}]},
        )
    assert messages.status_code == 200 and "message_stop" in messages.text
    assert gemini.status_code == 200 and "usageMetadata" in gemini.text
    anthropic_upstream = [r for r in fake_requests(proxy.fake)
                          if r["headers"].get("x-execution-id") == exec_id and r["provider"] == "anthropic"][-1]
    assert anthropic_upstream["headers"]["x-api-key"] == CLIENT_ANTHROPIC_KEY
    records = {r["provider"]: r for r in proxy.gateway.wait_records(2, execution_id=exec_id)}
    assert records["anthropic"]["model"] == "claude-sonnet-4-5" and records["anthropic"]["input_tokens"] == 3
    assert records["gemini"]["model"] == "gemini-2.5-flash" and records["gemini"]["input_tokens"] == 2
    assert all(r["stream"] == 1 and r["cost_usd"] > 0 for r in records.values())


def test_gemini_embeddings_without_usage_are_unpriced_not_free(proxy: InterceptGateway) -> None:
    """An embedding answer carries no usage; in intercept mode TokenSense makes no counting call of its own,
    so the record's cost is unknown (NULL), never $0."""
    exec_id = new_exec()
    with proxy.client() as client:
        response = client.post(
            f"https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:embedContent"
            f"?key={CLIENT_GEMINI_KEY}", headers={"x-execution-id": exec_id},
            json={"content": {"parts": [{"text": "embed me please"}]}})
    assert response.status_code == 200 and response.json()["embedding"]["values"]
    [record] = proxy.gateway.wait_records(execution_id=exec_id)
    assert (record["model"], record["status"], record["input_tokens"]) == ("gemini-embedding-001", 200, 0)
    assert record["cost_usd"] is None
    assert not [r for r in fake_requests(proxy.fake) if r["path"].endswith(":countTokens")
                and "embed me please" in json.dumps(r.get("body"))]


def test_other_hosts_pass_through_without_interception(proxy: InterceptGateway) -> None:
    exec_id = new_exec()
    # Trusting only the server's own certificate works: mitmproxy did not decrypt the connection.
    with httpx.Client(proxy=proxy.proxy_url, verify=ssl.create_default_context(cafile=str(proxy.upstream_cert)),
                      timeout=20) as client:
        response = client.post(
            f"https://{OTHER_HOST}/v1/chat/completions",
            headers={"authorization": "Bearer sk-other-service", "x-execution-id": exec_id},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "not metered"}]},
        )
        own = x509.load_pem_x509_certificate(proxy.upstream_cert.read_bytes())
        assert peer_certificate(response) == own
    assert response.status_code == 200
    assert "x-tokensense-request-id" not in response.headers
    assert last_request(proxy.other, exec_id)["headers"]["authorization"] == "Bearer sk-other-service"
    # And a client that trusts only mitmproxy's CA cannot talk to it: it is never mitmproxy's certificate.
    with proxy.client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"https://{OTHER_HOST}/_fake/health")
    time.sleep(0.3)
    assert proxy.gateway.records(execution_id=exec_id) == []


def test_gateway_mode_still_works_next_to_intercept_mode(proxy: InterceptGateway) -> None:
    exec_id = new_exec()
    ok = httpx.post(f"{proxy.gateway.url}/v1/chat/completions",
                    headers={"authorization": f"Bearer {proxy.gateway.key}", "x-execution-id": exec_id,
                             "x-workflow-tag": "wf-gateway"},
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "via the gateway"}]},
                    timeout=20)
    assert ok.status_code == 200, ok.text
    refused = httpx.post(f"{proxy.gateway.url}/v1/chat/completions",
                         headers={"authorization": f"Bearer {WRONG_TOKENSENSE_KEY}", "x-execution-id": exec_id},
                         json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "no"}]}, timeout=20)
    assert refused.status_code == 401
    records = proxy.gateway.wait_records(2, execution_id=exec_id)
    assert sorted(r["status"] for r in records) == [200, 401]
    assert last_request(proxy.fake, exec_id)["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"


def test_recording_has_no_key_and_reprices_to_the_recorded_totals(proxy: InterceptGateway) -> None:
    """Runs last in this module: it stops the gateway so that the recording is complete."""
    expected = len(proxy.gateway.wait_records(6))
    proxy.stop()
    records = proxy.gateway.records()
    assert len(records) == expected >= 6
    data = proxy.record_file.read_bytes()
    secrets = [proxy.gateway.key, WRONG_TOKENSENSE_KEY, CLIENT_OPENAI_KEY, CLIENT_ANTHROPIC_KEY, CLIENT_GEMINI_KEY,
               *PROVIDER_KEYS.values(), "sk-ant-env-key-of-the-gateway"]
    for secret in secrets:
        assert secret.encode() not in data, f"{secret[:8]}... is in the recording"
    assert b"[redacted]" in data
    assert b"hello over the proxy" in data  # bodies are kept unless --redact-bodies

    result = proxy.gateway.cli("reprice", str(proxy.record_file), "--json")
    report = json.loads(result.stdout)
    total = report["total"]
    assert total["requests"] == len(records) and total["unrecorded"] == 0
    assert total["input_tokens"] == sum(r["input_tokens"] for r in records)
    assert total["output_tokens"] == sum(r["output_tokens"] for r in records)
    assert total["recorded_cost_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in records), rel=1e-9,
                                                       abs=1e-12)  # unpriced records (embeddings) count 0
    assert total["cost_usd"] == pytest.approx(total["recorded_cost_usd"], rel=1e-9, abs=1e-12)
    workflows = {g["workflow"]: g for g in report["by_workflow"]}
    assert workflows["wf-intercept"]["requests"] == 2 and workflows["wf-native"]["requests"] == 2
    models = {(g["provider"], g["model"]) for g in report["by_model"]}
    assert {("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("gemini", "gemini-2.5-flash")} <= models
    text = proxy.gateway.cli("reprice", str(proxy.record_file)).stdout
    assert "wf-intercept" in text and "TOTAL" in text

    # Replay serves the recorded answers, in order, without any provider.
    port = free_port()
    replay = subprocess.Popen([str(BIN / "tokensense"), "replay", str(proxy.record_file), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=proxy.gateway.env)
    try:
        assert replay.stdout is not None
        assert "TokenSense replay of" in replay.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                first = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                                   headers={"authorization": "Bearer anything"}, timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert first.status_code == 200
        assert first.json()["choices"][0]["message"]["content"] == "Hello from gpt-4o-mini."
        assert "x-tokensense-request-id" not in first.headers
        streamed = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o-mini", "stream": True},
                              timeout=5)
        assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert chunks and all(c["choices"] for c in chunks), "the usage chunk the client never saw is not replayed"
        assert httpx.post(f"{url}/v1/embeddings", json={}, timeout=5).status_code == 404
    finally:
        replay.send_signal(signal.SIGINT)
        try:
            replay.wait(timeout=15)
        except subprocess.TimeoutExpired:
            replay.kill()
            replay.wait()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, upstreams) -> Iterator[InterceptGateway]:
    """An intercept proxy that requires a TokenSense key, records with --redact-bodies, and saves with -w too."""
    fake, other, cert = upstreams
    tmp = tmp_path_factory.mktemp("guarded")
    gw = start_intercept_gateway(tmp, fake, other, cert, require_key=True, redact_bodies=True,
                                 save_file=tmp / "mitmdump.flows")
    yield gw
    gw.stop()


def test_required_key_is_checked_removed_and_its_policies_apply(guarded: InterceptGateway) -> None:
    exec_id = new_exec()
    gw = guarded.gateway
    limited = json.loads(gw.cli("keys", "create", "only-4o", "--allow-model", "gpt-4o", "--project", "proj-limited",
                                "--json").stdout)["key"]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "zebra secret prompt words"}]}
    common = {"authorization": f"Bearer {CLIENT_OPENAI_KEY}", "x-execution-id": exec_id, "x-workflow-tag": "wf-guarded"}
    with guarded.client() as client:
        missing = client.post("https://api.openai.com/v1/chat/completions", headers=common, json=body)
        wrong = client.post("https://api.openai.com/v1/chat/completions",
                            headers={**common, "x-tokensense-key": WRONG_TOKENSENSE_KEY}, json=body)
        ok = client.post("https://api.openai.com/v1/chat/completions",
                         headers={**common, "x-tokensense-key": gw.key}, json=body)
        denied = client.post("https://api.openai.com/v1/chat/completions",
                             headers={**common, "x-tokensense-key": limited}, json=body)
    assert missing.status_code == 401 and "x-tokensense-key" in missing.json()["error"]["message"]
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert ok.status_code == 200, ok.text
    assert denied.status_code == 403, denied.text
    upstream = last_request(guarded.fake, exec_id)
    assert "x-tokensense-key" not in upstream["headers"]
    assert upstream["headers"]["authorization"] == f"Bearer {CLIENT_OPENAI_KEY}"
    records = gw.wait_records(4, execution_id=exec_id)
    by_status = {r["status"]: r for r in records}
    assert sorted(by_status) == [200, 401, 403]
    assert by_status[200]["key_name"] == "e2e" and by_status[200]["project"] == "proj-default"
    assert by_status[200]["input_tokens"] == 4 and by_status[200]["cost_usd"] > 0


def test_redacted_recordings_keep_usage_but_no_prompt(guarded: InterceptGateway) -> None:
    """Runs after the call above: stops this gateway to complete both recordings (--record and -w)."""
    records = guarded.gateway.wait_records(4)
    guarded.stop()
    assert guarded.save_file is not None
    for path in (guarded.record_file, guarded.save_file):
        data = path.read_bytes()
        assert data, f"{path.name} is empty"
        for secret in (guarded.gateway.key, WRONG_TOKENSENSE_KEY, CLIENT_OPENAI_KEY):
            assert secret.encode() not in data, f"{secret[:8]}... is in {path.name}"
        report = json.loads(guarded.gateway.cli("reprice", str(path), "--json").stdout)
        assert report["total"]["requests"] == len(records)
        assert report["total"]["input_tokens"] == sum(r["input_tokens"] for r in records)
        assert report["total"]["recorded_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records))
        assert report["total"]["cost_usd"] == pytest.approx(report["total"]["recorded_cost_usd"])
    redacted = guarded.record_file.read_bytes()
    assert b"zebra" not in redacted and b"Hello from" not in redacted
    assert b"gpt-4o-mini" in redacted  # model names stay
    assert os.path.getsize(guarded.save_file) > 0
