"""The gateway as a plain mitmproxy script: `mitmdump -s addons/tokensense.py` with no mode flags."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from conftest import BIN, PROVIDER_KEYS, ROOT, FakeProvider, clean_env, free_port, stop, wait_healthy

pytestmark = pytest.mark.e2e


def test_mitmdump_script_serves_the_gateway_in_reverse_mode(tmp_path, fake_provider: FakeProvider) -> None:
    env = clean_env()
    env["TOKENSENSE_HOME"] = str(tmp_path)
    env["TOKENSENSE_OPENAI_BASE_URL"] = f"{fake_provider.url}/mitmdump"
    env["OPENAI_API_KEY"] = PROVIDER_KEYS["openai"]
    key = json.loads(subprocess.run([str(BIN / "tokensense"), "keys", "create", "script", "--json"], env=env,
                                    capture_output=True, text=True, check=True).stdout)["key"]
    port = free_port()
    # Run from another folder: the script must find the package, not itself.
    proc = subprocess.Popen([str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "tokensense.py"),
                             "--listen-port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", proc, "mitmdump with the gateway script")
        r = httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        assert fake_provider.last("mitmdump")["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    finally:
        stop(proc)
    out = proc.stdout.read() if proc.stdout else ""
    assert f"listening at 127.0.0.1:{port}" in out  # loopback only, as the gateway's default
    assert key not in out


def test_key_in_the_query_never_reaches_mitmproxys_log(tmp_path, fake_provider: FakeProvider) -> None:
    env = clean_env()
    env["TOKENSENSE_HOME"] = str(tmp_path)
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "tokensense.py"),
                             "--listen-port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    secret = "tsk_this-looks-like-a-real-key-0123456789"
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, "mitmdump with the gateway script")
        r = httpx.post(f"http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:generateContent",
                       params={"key": secret}, json={"contents": []}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    finally:
        stop(proc)
    out = proc.stdout.read() if proc.stdout else ""
    assert "gemini-2.5-flash" in out  # mitmdump did log the flow...
    assert secret not in out  # ...without the key
