"""mkdocs hooks: the reference pages generated from the code, and the README's checks.

- `<!-- generated: cli -->` becomes the help of every `tokensense` command (argparse, `build_parser()`);
- `<!-- generated: settings -->` the environment variables (the pydantic `Settings` model: name, type, default, and
  the comment the field carries in tokensense/settings.py), then every other `TOKENSENSE_*` variable the package
  reads (found in its source);
- `<!-- generated: config.toml -->` the tables of config.toml (the models of tokensense/config.py).

So the reference cannot drift from the code: a setting without a comment fails the build (`mkdocs build --strict`
runs in scripts/test). The README is checked here too: at most 300 lines, the two set-up commands shown, and every
link either to a public site or to a file of the repository.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import logging
import os
import re
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300
README_MUST_SHOW = ("scripts/serve", "scripts/test")
# Variables TokenSense sets for its own worker processes (`serve --workers`); never set by hand.
INTERNAL_VARIABLES = {"TOKENSENSE_WORKER", "TOKENSENSE_LISTEN_FDS", "TOKENSENSE_HUB_SOCKET",
                      "TOKENSENSE_WORKERS_SOCKET", "TOKENSENSE_REUSE_PORT"}

log = logging.getLogger("mkdocs.plugins.tokensense")


class DocsError(PluginError):
    """Stops the build: mkdocs reports it as an error."""


# --- comments of fields -------------------------------------------------------------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """Each annotated field of `cls` (and of the classes it derives from) → the comment on its line, else the
    comment block just above it, else (in a run of fields under such a block) that block."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.split(".")[0] in ("builtins", "pydantic", "pydantic_settings", "typing", "sqlmodel"):
            continue
        found.update(_own_field_comments(klass))
    return found


def _own_field_comments(cls: type) -> dict[str, str]:
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    found: dict[str, str] = {}
    previous: tuple[int, str] | None = None  # (end line, description) of a field described by the block above it
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments.get(line, ""))
            line -= 1
        shared = False  # a comment block above a run of fields describes each of them
        if trailing:
            text = " ".join(trailing)
        elif above:
            text, shared = " ".join(above), True
        elif previous is not None and previous[0] == node.lineno - 1:
            text, shared = previous[1], True
        else:
            text = ""
        found[node.target.id] = text
        previous = ((node.end_lineno or node.lineno), text) if shared else None
    return found


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None)) + " (optional)"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return str(annotation).replace("typing.", "")


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, Path):
            return "`" + str(value).replace(str(Path.home()), "~") + "`"
        return "(empty)" if value in ([], {}) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "(required)"
    if field.default is None:
        return "(none)"
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the generated pages ------------------------------------------------------------------------------------


def settings_reference() -> str:
    from tokensense.settings import Settings

    comments = field_comments(Settings)
    rows = ["| Variable | Type | Default | Meaning |", "|---|---|---|---|"]
    missing = []
    for name, field in Settings.model_fields.items():
        text = field.description or comments.get(name, "")
        if not text:
            missing.append(name)
        rows.append(f"| `TOKENSENSE_{name.upper()}` | {_type_name(field.annotation)} | {_cell(_default(field))} "
                     f"| {_cell(text)} |")
    if missing:
        raise DocsError(f"settings without a description (a comment on the field in tokensense/settings.py): "
                        f"{', '.join(missing)}")
    others = other_variables(set(f"TOKENSENSE_{n.upper()}" for n in Settings.model_fields))
    lines = [*rows, "", "Read elsewhere in the package (not part of the settings model):", ""]
    lines += [f"- `{name}` ({', '.join(f'`{m}`' for m in modules)})" for name, modules in others.items()
              if name not in INTERNAL_VARIABLES]
    lines += ["", "Set by TokenSense for its own worker processes (`serve --workers`), never by hand: "
              + ", ".join(f"`{n}`" for n in sorted(INTERNAL_VARIABLES)) + "."]
    return "\n".join(lines)


def other_variables(known: set[str]) -> dict[str, list[str]]:
    """`TOKENSENSE_*` names in string literals of the package's source that the settings model does not hold."""
    found: dict[str, list[str]] = {}
    for package in ("tokensense", "addons", "tui"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in re.findall(r"^TOKENSENSE_[A-Z][A-Z0-9_]*[A-Z0-9]$", node.value):
                        if name not in known and not name.endswith("_BASE_URL"):
                            module = str(path.relative_to(ROOT))
                            if module not in found.setdefault(name, []):
                                found[name].append(module)
    return dict(sorted(found.items()))


def config_reference() -> str:
    from tokensense import config

    out: list[str] = []
    file_fields = config.FileConfig.model_fields
    sections = {
        "models": ("[models.\"NAME\"]", config.ModelPrice),
        "routing": ("[routing]", config.RoutingConfig),
        "alerts": ("[alerts]", config.AlertsConfig),
        "providers": ("[providers.NAME]", config.ProviderConfig),
    }
    top_comments = field_comments(config.FileConfig)
    for name in file_fields:
        if name in sections:
            title, model = sections[name]
            comments = field_comments(model)
            out += [f"### `{title}`", "", inspect.cleandoc(model.__doc__ or ""), "",
                    "| Key | Type | Default | Meaning |", "|---|---|---|---|"]
            for key, field in model.model_fields.items():
                if key == "timeouts" and model is config.RoutingConfig:
                    continue
                out.append(f"| `{key}` | {_type_name(field.annotation)} | {_cell(_default(field))} "
                           f"| {_cell(field.description or comments.get(key, ''))} |")
            out.append("")
            if model is config.RoutingConfig:
                timeouts = field_comments(config.Timeouts)
                out += ["#### `[routing.timeouts]`", "", inspect.cleandoc(config.Timeouts.__doc__ or ""), "",
                        "A key is a provider name, a model name or a model pattern (`\"gpt-4o*\"`); its value a "
                        "table of:", "", "| Key | Type | Default | Meaning |", "|---|---|---|---|"]
                for key, field in config.Timeouts.model_fields.items():
                    out.append(f"| `{key}` | {_type_name(field.annotation)} | {_cell(_default(field))} "
                               f"| {_cell(timeouts.get(key, ''))} |")
                out.append("")
        else:
            field = file_fields[name]
            out += [f"### `[{name}]`", "", f"Type: {_type_name(field.annotation)}. "
                    + _cell(field.description or top_comments.get(name, "")), ""]
    return "\n".join(out).strip()


def _parsers(parser: argparse.ArgumentParser, prog: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """`parser` and every subcommand under it, depth first, in the order they are listed."""
    found = [(prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                found += _parsers(action.choices[choice.dest], f"{prog} {choice.dest}")
    return found


def cli_reference() -> str:
    from tokensense.cli.commands import build_parser

    out = []
    for prog, parser in _parsers(build_parser(), "tokensense"):
        level = "##" if prog.count(" ") <= 1 else "###"
        out += [f"{level} `{prog}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(out).strip()


GENERATED = {"cli": cli_reference, "settings": settings_reference, "config.toml": config_reference}


def _stable_environment() -> None:
    """Help texts that do not depend on the machine that builds the docs."""
    from tokensense.settings import reset_settings

    os.environ["COLUMNS"] = "110"
    os.environ["TOKENSENSE_HOME"] = "$TOKENSENSE_HOME"
    os.environ.pop("TOKENSENSE_DATABASE_URL", None)
    reset_settings()


# --- the README ---------------------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def readme_problems(readme: Path = ROOT / "README.md") -> list[str]:
    text = readme.read_text()
    problems = []
    count = len(text.splitlines())
    if count > README_MAX_LINES:
        problems.append(f"README.md has {count} lines (at most {README_MAX_LINES}: move the rest to docs/)")
    for command in README_MUST_SHOW:
        if command not in text:
            problems.append(f"README.md does not show `{command}`")
    for target in _LINK.findall(text):
        if target.startswith("#"):
            continue
        if re.match(r"^[a-z]+:", target):
            if not target.startswith("https://") or re.match(r"^https://(localhost|127\.|\[::1\])", target):
                problems.append(f"README.md links {target!r}: only public https:// sites may be linked")
            continue
        path = (readme.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT):
            problems.append(f"README.md links {target!r}, outside the repository")
        elif not path.exists():
            problems.append(f"README.md links {target!r}, which does not exist")
    return problems


# --- mkdocs events ------------------------------------------------------------------------------------------


def on_pre_build(config: Any) -> None:
    problems = readme_problems()
    if problems:
        raise DocsError("; ".join(problems))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- generated:" not in markdown:
        return markdown
    _stable_environment()
    for name, render in GENERATED.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
