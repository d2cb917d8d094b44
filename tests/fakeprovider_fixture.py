"""Pytest fixtures that run the fake provider as a real subprocess on a free port.

Import them into a test module or conftest.py:

    from fakeprovider_fixture import fake_provider, fake_provider_url, fake_requests

`fake_provider_url` (session scope) is the base URL, e.g. `http://127.0.0.1:41234`, of the session's one fake
(conftest.py's `shared_fake_provider`, which the gateways of the end-to-end tests call too);
`fake_provider` is the same URL with the request log cleared before the test.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_PREFIX = "fake provider listening on "


@contextlib.contextmanager
def running_fake_provider(*extra_args: str, timeout: float = 20.0) -> Iterator[str]:
    """Start `python -m tokensense.demo.fakeprovider --port 0` and yield its base URL; stop it afterwards."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tokensense.demo.fakeprovider", "--host", "127.0.0.1", "--port", "0", *extra_args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            yield _read_url(process, stderr, timeout)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()


def _read_url(process: subprocess.Popen[str], stderr: Any, timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX) :].strip()
            if line:
                continue
        if process.poll() is not None:
            break
    stderr.seek(0)
    details = stderr.read().decode(errors="replace")
    raise RuntimeError(f"the fake provider did not report its port within {timeout}s (exit code {process.poll()}):\n{details}")


@pytest.fixture(scope="session")
def fake_provider_url(shared_fake_provider: Any) -> str:
    """The session's one fake provider (tests/conftest.py `shared_fake_provider`), the gateways' upstream too."""
    return shared_fake_provider.url


@pytest.fixture
def fake_provider(fake_provider_url: str) -> str:
    """The fake's base URL, with its request log emptied for this test."""
    httpx.delete(f"{fake_provider_url}/_fake/requests").raise_for_status()
    return fake_provider_url


def fake_requests(url: str) -> list[dict[str, Any]]:
    """Every request the fake received since the log was last cleared, oldest first."""
    response = httpx.get(f"{url}/_fake/requests")
    response.raise_for_status()
    return response.json()
