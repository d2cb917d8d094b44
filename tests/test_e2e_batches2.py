"""Batch jobs across processes and with the rest of the gateway: a Gemini resumable upload whose requests land on
different instances, batch lines seen by the metrics and budget alerts, retention of batch and owned rows."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FakeProvider, Gateway, start_gateway, stop
from tests.test_e2e_batches import POLL, gemini_client, spawn, wait_booked

GEMINI_LINE = {
    "contents": [{"role": "user", "parts": [{"text": "Tell me about batches, and why they cost half as much"}]}],
    "generationConfig": {"maxOutputTokens": 50},
}


def gemini_jsonl(count: int) -> bytes:
    lines = [
        {"key": f"k{i}", "request": {**GEMINI_LINE, "generationConfig": {"maxOutputTokens": 10 + i}}}
        for i in range(count)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def resumable_upload(origins: list[str], key: str, data: bytes, chunk: int, *, between=None) -> dict:  # type: ignore[no-untyped-def]
    """google-genai's resumable protocol by hand, each request on a new connection: the start on `origins[0]`,
    then the bytes in `chunk`-byte requests, the n-th on `origins[n % len(origins)]` (the session URL the
    gateway handed out, its origin swapped). `between(n)` runs before the n-th request (0: the start)."""
    if between is not None:
        between(0)
    start = httpx.post(
        f"{origins[0]}/upload/v1beta/files",
        headers={
            "x-goog-api-key": key,
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(len(data)),
            "x-goog-upload-header-content-type": "application/jsonl",
        },
        json={"file": {"displayName": "input.jsonl", "mimeType": "application/jsonl"}},
        timeout=30,
    )
    assert start.status_code == 200, start.text
    session = httpx.URL(start.headers["x-goog-upload-url"])
    assert key not in str(session)
    answer: httpx.Response | None = None
    for n, offset in enumerate(range(0, len(data), chunk), start=1):
        if between is not None:
            between(n)
        last = offset + chunk >= len(data)
        target = httpx.URL(origins[n % len(origins)])
        answer = httpx.post(
            session.copy_with(host=target.host, port=target.port),
            headers={
                "x-goog-upload-command": "upload, finalize" if last else "upload",
                "x-goog-upload-offset": str(offset),
            },
            content=data[offset : offset + chunk],
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    assert answer is not None
    return answer.json()["file"]


def file_lines(db: Path, file_id: str) -> dict:
    conn = sqlite3.connect(db)
    try:
        (lines,) = conn.execute("SELECT lines FROM batch_files WHERE id = ?", (file_id,)).fetchone()
        return json.loads(lines)
    finally:
        conn.close()


@pytest.fixture
def gw(tmp_path: Path, fake_provider: FakeProvider) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path, fake_provider, extra_env=POLL)
    yield gateway
    stop(gateway.process)


def test_a_resumable_upload_goes_on_at_another_instance_on_the_same_database(
    gw: Gateway, tmp_path: Path, fake_provider: FakeProvider
) -> None:
    """Two instances on one database: the upload starts on one, its requests alternate between both (lines cut
    across requests); the file's sums equal a one-request upload's, and a job from it is reserved and booked."""
    second = spawn(gw, tmp_path)
    try:
        data = gemini_jsonl(6)
        first = gemini_client(gw)
        whole = first.files.upload(file=io.BytesIO(data), config={"mime_type": "application/jsonl"})
        assert whole.name is not None
        expected = file_lines(gw.db_path, whole.name.removeprefix("files/"))
        assert expected["lines"] == 6
        uploaded = resumable_upload([gw.url, second.url], gw.key, data, chunk=97)
        name = uploaded["name"]
        assert file_lines(gw.db_path, name.removeprefix("files/")) == expected
        client = gemini_client(second)
        assert client.files.get(name=name).size_bytes == len(data)
        job = client.batches.create(model="gemini-2.5-flash", src=name)
        assert job.name is not None
        booked = wait_booked(gw, job.name.removeprefix("batches/"))
        assert booked["lines_booked"] == 6 and booked["reserved_usd"] > 0
        conn = sqlite3.connect(gw.db_path)
        try:
            assert conn.execute("SELECT count(*) FROM upload_sessions").fetchone() == (0,)
        finally:
            conn.close()
        # An unknown session is not forwarded, on any instance.
        refused = httpx.post(
            f"{second.url}/upload/v1beta/files?upload_id=nope&upload_protocol=resumable",
            headers={"x-goog-upload-command": "upload, finalize"},
            content=b"{}\n",
        )
        assert refused.status_code in (401, 404)
    finally:
        stop(second.process)
