"""`tokensense report`: a period's spend by attribution, totals, and the change against the previous period."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from tokensense.cli import commands as cli
from tokensense.cli.report import Amounts, build_report, change
from tokensense.settings import reset_settings
from tokensense.storage import db, repo
from tokensense.storage.models import UsageCreate


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TOKENSENSE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TOKENSENSE_DATABASE_URL", raising=False)
    reset_settings()
    db.reset_engine()
    yield tmp_path / "home"
    db.reset_engine()
    reset_settings()


def _usage(ago: timedelta, workflow: str | None, model: str, cost: float | None, **fields) -> UsageCreate:
    return UsageCreate(provider="openai", model=model, endpoint="/v1/chat/completions", status=200,
                       workflow=workflow, input_tokens=100, output_tokens=10, cost_usd=cost,
                       created_at=datetime.now(UTC) - ago, **fields)


@pytest.fixture
def records() -> None:
    day = timedelta(days=1)
    usages = [
        # this period (the last 30 days)
        _usage(2 * day, "lead-enrichment", "gpt-4o-mini", 1.25),
        _usage(3 * day, "lead-enrichment", "gpt-4o-mini", 1.25),
        _usage(4 * day, "lead-enrichment", "claude-haiku-4-5", 0.50),
        _usage(5 * day, "support-bot", "gpt-4o-mini", 3.00),
        _usage(6 * day, None, "gpt-4o-mini", 0.10),
        _usage(7 * day, "support-bot", "mystery-model", None),  # unpriced
        # the previous period (30 to 60 days ago)
        _usage(35 * day, "lead-enrichment", "gpt-4o-mini", 2.00),
        _usage(40 * day, "support-bot", "gpt-4o-mini", 1.00),
        _usage(45 * day, "retired-flow", "gpt-4o", 4.00),
        # older than both: in neither
        _usage(90 * day, "lead-enrichment", "gpt-4o-mini", 100.0),
    ]
    with Session(db.get_engine()) as session:
        repo.record_usages(session=session, usages=usages)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_report_groups_totals_and_changes(records: None) -> None:
    now = datetime.now(UTC)
    with Session(db.get_engine()) as session:
        report = build_report(session=session, fields=["workflow", "model"], start=now - timedelta(days=30), end=now)
    rows = {row.values: row for row in report.rows}
    assert set(rows) == {("lead-enrichment", "gpt-4o-mini"), ("lead-enrichment", "claude-haiku-4-5"),
                         ("support-bot", "gpt-4o-mini"), ("support-bot", "mystery-model"), (None, "gpt-4o-mini"),
                         ("retired-flow", "gpt-4o")}
    lead = rows[("lead-enrichment", "gpt-4o-mini")]
    assert lead.current == Amounts(2, 200, 20, 2.5)
    assert lead.previous == Amounts(1, 100, 10, 2.0)
    assert lead.change == pytest.approx(0.25)
    assert rows[("support-bot", "gpt-4o-mini")].change == pytest.approx(2.0)
    assert rows[("lead-enrichment", "claude-haiku-4-5")].change is None  # new this period
    retired = rows[("retired-flow", "gpt-4o")]
    assert retired.current == Amounts() and retired.previous.cost_usd == 4.0 and retired.change == -1.0
    assert report.total.current == Amounts(6, 600, 60, 6.1)
    assert report.total.previous == Amounts(3, 300, 30, 7.0)
    assert report.total.change == pytest.approx(6.1 / 7.0 - 1)
    assert (report.unpriced, report.previous_unpriced) == (1, 0)
    # costliest workflow first, its models together under it
    assert [row.values for row in report.rows][:3] == [
        ("lead-enrichment", "gpt-4o-mini"), ("lead-enrichment", "claude-haiku-4-5"), ("support-bot", "gpt-4o-mini")]


def test_report_markdown_is_a_table_with_totals(records: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "report", "--since", "30d", "--by", "workflow,model", "--format", "md")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("**TokenSense spend, ")
    assert lines[2] == ("| Workflow | Model | Requests | Input tokens | Output tokens | Cost | Previous period "
                        "| Change |")
    assert "| lead-enrichment | gpt-4o-mini | 2 | 200 | 20 | $2.50 | $2.00 | +25.0% |" in lines
    assert "| lead-enrichment | claude-haiku-4-5 | 1 | 100 | 10 | $0.50 | $0.00 | new |" in lines
    assert "| retired-flow | gpt-4o | 0 | 0 | 0 | $0.00 | $4.00 | -100.0% |" in lines
    assert "| (none) | gpt-4o-mini | 1 | 100 | 10 | $0.10 | $0.00 | new |" in lines
    assert "| **Total** |  | **6** | **600** | **60** | **$6.10** | **$7.00** | **-12.9%** |" in lines
    assert "1 calls this period and 0 in the previous one had no known price" in out


def test_report_csv_and_json(records: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "report", "--since", "30d", "--by", "workflow", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["workflow", "requests", "input_tokens", "output_tokens", "cost_usd",
                             "previous_requests", "previous_cost_usd", "change"]
    by_workflow = {row["workflow"]: row for row in rows}
    assert by_workflow["support-bot"]["cost_usd"] == "3.0" and by_workflow["support-bot"]["previous_cost_usd"] == "1.0"
    assert by_workflow["support-bot"]["change"] == "2.0"
    assert by_workflow["TOTAL"]["requests"] == "6" and by_workflow["TOTAL"]["previous_cost_usd"] == "7.0"

    code, out, _ = run(capsys, "report", "--since", "30d", "--by", "key,model", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["by"] == ["key_name", "model"]
    assert data["totals"]["cost_usd"] == pytest.approx(6.1) and data["totals"]["unpriced"] == 1
    start, end = (datetime.fromisoformat(data["period"][k]) for k in ("start", "end"))
    assert end - start == timedelta(days=30)
    assert datetime.fromisoformat(data["previous_period"]["end"]) == start


def test_report_refuses_unknown_fields_and_formats(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "report", "--by", "colour")
    assert code == 2 and "cannot report by 'colour'; allowed fields: workflow" in err
    code, _, err = run(capsys, "report", "--format", "xlsx")
    assert code == 2 and "invalid choice: 'xlsx'" in err
    code, out, _ = run(capsys, "report", "--since", "7d")
    assert code == 0 and "| **Total** |  | **0** |" in out


def test_change() -> None:
    assert change(2.0, 1.0) == 1.0
    assert change(0.0, 1.0) == -1.0
    assert change(1.0, 0.0) is None
