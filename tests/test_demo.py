"""`tokensense demo` as a newcomer runs it: gateway and fake providers start, attributed traffic is recorded."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest
from conftest import BIN, clean_env, free_port

pytestmark = pytest.mark.e2e


def test_demo_sends_attributed_traffic_across_providers(tmp_path) -> None:
    env = clean_env()
    env["TOKENSENSE_HOME"] = str(tmp_path)
    result = subprocess.run([str(BIN / "tokensense"), "demo", "--port", str(free_port()), "--rate", "15",
                             "--duration", "4"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tokensense dashboard" in result.stdout
    conn = sqlite3.connect(tmp_path / "tokensense.db")
    rows = conn.execute("SELECT workflow, provider, status, cost_usd, stream FROM usage").fetchall()
    conn.close()
    assert len(rows) >= 10
    assert len({r[0] for r in rows if r[0]}) >= 2
    assert len({r[1] for r in rows if r[1]}) >= 3
    assert sum(r[3] for r in rows) > 0
