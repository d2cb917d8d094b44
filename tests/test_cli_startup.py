"""The command line starts quickly: `tokensense --help` and `tokensense usage` import only what they use.

No timing is asserted (the machine is shared); what is checked is which modules a command imports. The import
times are measured with `python -X importtime` (see the report in docs/cli.md's history).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = (
    "mitmproxy",
    "textual",
    "textual_serve",
    "alembic",
    "botocore",
    "google.auth",
    "genai_prices",
    "httpx",
    "aiohttp",
    "tokensense.providers",
    "tokensense.gateway",
    "tokensense.metering.pricing",
    "opentelemetry",
    "redis",
    "prometheus_client",
)
DATABASE = ("sqlalchemy", "sqlmodel", "tokensense.storage")

_PROBE = """
import json, sys
from tokensense.cli import main
code = main(sys.argv[1:])
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported_by(tmp_path: Path, *argv: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSENSE_")}
    env["TOKENSENSE_HOME"] = str(tmp_path / "home")
    result = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, timeout=120)
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules or any(m.startswith(n + ".") for m in modules)]


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["report", "--help"], ["usage", "--help"]])
def test_help_imports_nothing_heavy(tmp_path: Path, argv: list[str]) -> None:
    modules = imported_by(tmp_path, *argv)
    assert _loaded(modules, HEAVY) == []
    if argv[0] in ("--help", "--version"):
        assert _loaded(modules, DATABASE) == []


def test_usage_and_report_import_the_database_only(tmp_path: Path) -> None:
    imported_by(tmp_path, "usage")  # the first command makes the database (Alembic's migrations run once)
    # Execution ids are only in the records: the full path (SQLAlchemy), and nothing heavier.
    for argv in (["usage", "--by", "execution_id"], ["report", "--since", "7d", "--by", "execution_id"]):
        modules = imported_by(tmp_path, *argv)
        assert _loaded(modules, HEAVY) == [], argv
        assert "sqlmodel" in modules


LIGHT = ("sqlalchemy", "sqlmodel", "pydantic", "pydantic_settings", "tokensense.settings", "tokensense.storage.models")


@pytest.mark.parametrize(
    "argv",
    [
        ["usage", "--by", "workflow"],
        ["usage", "--by", "model,project", "--since", "7d"],
        ["usage", "--by", "key", "--since", "1h", "--csv"],
        ["usage", "--by", "status", "--since", "30d"],
        ["usage"],
        ["usage", "--since", "1h", "--json"],
        ["usage", "--since", "7d", "--limit", "20", "--csv"],
        ["report"],
        ["report", "--since", "7d", "--by", "workflow,model", "--format", "csv"],
        ["report", "--since", "30d", "--by", "key", "--format", "json"],
    ],
)
def test_usage_and_report_read_through_the_driver_alone(tmp_path: Path, argv: list[str]) -> None:
    """`tokensense usage --by ... --since ...`, record listings (JSON, CSV, the table) and `tokensense report` on
    an existing database (the one TOKENSENSE_HOME names, found without the settings model): neither SQLAlchemy
    nor pydantic is imported (storage/lite.py), nor anything heavy."""
    imported_by(tmp_path, "usage")  # creates the database (the full path: migrations)
    modules = imported_by(tmp_path, *argv)
    assert _loaded(modules, LIGHT) == [], argv
    assert _loaded(modules, HEAVY) == [], argv
    assert "sqlite3" in modules


def test_dashboard_and_serve_still_load_what_they_need(tmp_path: Path) -> None:
    from tokensense.cli.commands import build_parser

    args = build_parser(["dashboard"]).parse_args(["dashboard", "--web", "--port", "9999"])
    assert args.web and args.port == 9999 and args.host == "127.0.0.1"
    args = build_parser(["serve"]).parse_args(["serve", "--workers", "2"])
    assert args.workers == 2
