"""The docs site and the README: the checks `mkdocs build --strict` runs (scripts/test), and the generated
references covering everything the code has."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import mkdocs_hooks as hooks


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def test_readme_is_a_newcomers_page() -> None:
    assert hooks.readme_problems() == []
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert "scripts/serve" in text and "scripts/test" in text


def test_readme_check_finds_what_is_wrong(tmp_path: Path) -> None:
    readme = ROOT / "README.md"
    bad = tmp_path / "README.md"
    bad.write_text("# x\n" + "line\n" * 300 + "[spec](../shared/SPEC.md) [gone](docs/nothing.md) "
                   "[local](http://127.0.0.1:8080/) [site](https://mitmproxy.org)\n")
    problems = hooks.readme_problems(bad)
    assert any("lines" in p for p in problems)
    assert any("scripts/serve" in p for p in problems) and any("scripts/test" in p for p in problems)
    assert any("outside the repository" in p or "does not exist" in p for p in problems if "SPEC" in p)
    assert any("docs/nothing.md" in p for p in problems)
    assert any("127.0.0.1" in p for p in problems)
    assert not any("mitmproxy.org" in p for p in problems)
    assert readme.exists()


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = set(_nav_pages(config["nav"]))
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert on_disk == pages
    # the pages other work writes into the site keep these names
    assert {"architecture.md", "adding-a-provider.md", "reliability.md", "analytics.md", "index.md"} <= pages
    assert (ROOT / "docs" / "dashboard-web.png").stat().st_size > 10_000


def test_configuration_reference_holds_every_setting_and_table() -> None:
    from tokensense.config import FileConfig, RoutingConfig
    from tokensense.settings import Settings

    hooks._stable_environment()
    settings = hooks.settings_reference()
    for name in Settings.model_fields:
        assert f"`TOKENSENSE_{name.upper()}`" in settings
    assert "`TOKENSENSE_DASHBOARD_TOKEN`" in settings
    assert "`TOKENSENSE_BEDROCK_REGION` (`tokensense/providers/bedrock/" in settings  # read outside the model
    tables = hooks.config_reference()
    for name in FileConfig.model_fields:
        assert name in tables
    for name in RoutingConfig.model_fields:
        assert f"`{name}`" in tables or f"[routing.{name}]" in tables
    assert "| `retries` | int | `1` | retries of one model after its first attempt |" in tables


def test_a_setting_without_a_description_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokensense import settings

    class Undocumented(settings.Settings):
        brand_new: int = 3

    monkeypatch.setattr(settings, "Settings", Undocumented)
    with pytest.raises(hooks.DocsError, match="brand_new"):
        hooks.settings_reference()


def test_field_comments() -> None:
    class Example:
        plain: int = 1  # on its line
        # a block above
        # of two lines
        above: int = 2
        # shared by the run below it
        first: str = "a"
        second: str = "b"

        third: str = "c"
        after_trailing: int = 4  # its own
        next_one: int = 5

    assert hooks.field_comments(Example) == {
        "plain": "on its line", "above": "a block above of two lines", "first": "shared by the run below it",
        "second": "shared by the run below it", "third": "", "after_trailing": "its own", "next_one": ""}


def test_cli_reference_holds_every_command() -> None:
    from tokensense.cli.commands import COMMANDS

    hooks._stable_environment()
    reference = hooks.cli_reference()
    for name in COMMANDS:
        assert f"## `tokensense {name}`" in reference
    for sub in ("keys create", "providers set", "db upgrade", "alerts test"):
        assert f"### `tokensense {sub}`" in reference
    assert "--web" in reference and "--read-only" not in reference


def test_command_summaries_match_their_parsers() -> None:
    """`tokensense --help` lists the summaries of COMMANDS without importing the groups; each must be the help
    its group gives the command."""
    from tokensense.cli.commands import COMMANDS, build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {action.dest: action.help for action in commands._choices_actions}
    assert list(helps) == list(COMMANDS)
    for name, (_, summary) in COMMANDS.items():
        assert helps[name] == summary, name
