"""`scripts/bench.py --quick` runs end to end and reports every lane (smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def test_quick_bench_reports_every_lane(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(out), "--duration", "1.5",
         "--warmup", "0.5", "--memory-requests", "50", "--chunks", "4"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())

    for target in ("direct", "bare", "tokensense"):
        for c in (1, 16, 64):
            lane = report["lanes"][f"{target}-c{c}"]
            assert lane["requests"] > 0 and lane["errors"] == 0, (target, c, lane)
            assert {"rps", "p50_ms", "p99_ms"} <= lane.keys()
    assert set(report["ratios"]) == {"c1", "c16", "c64"}

    streaming = report["streaming"]
    for lane in ("direct", "bare", "tokensense"):
        assert streaming[lane]["streams"] > 0 and streaming[lane]["errors"] == 0
    # Functional, not timed: every chunk came through TokenSense (how late is the benchmark's business).
    assert streaming["added"]["all_events_arrived"]
    assert "held_back" in streaming["tokensense"]

    memory = report["memory"]
    assert memory["requests"] == 50 and memory["errors"] == 0
    assert memory["rss_mb_before"] and memory["rss_mb_after"]
    assert len(report["targets"]) >= 4
    assert report["concurrency"]["lanes"]["tokensense"]["streams"] > 0
    assert "workers_lane" in report or (report["plan"]["workers"] or 1) <= 1
    assert "TokenSense benchmark" in result.stdout
