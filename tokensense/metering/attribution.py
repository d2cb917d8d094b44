"""Attribution of a call: the x-workflow-tag, x-step, x-execution-id, x-source and x-project headers."""

from __future__ import annotations

from collections.abc import Mapping

from tokensense.metering.sanitize import MAX_ATTRIBUTE, clean_text

ATTRIBUTION_HEADERS = {
    "x-workflow-tag": "workflow",
    "x-step": "step",
    "x-execution-id": "execution_id",
    "x-source": "source",
    "x-project": "project",
}

# Session headers coding agents send on every call of one session (seen on the wire, see README "Coding
# agents through TokenSense"): the session becomes the execution id when the client sent no x-execution-id.
AGENT_SESSION_HEADERS = (
    "x-claude-code-session-id",  # Claude Code
    "session-id",  # Codex CLI 0.17x
    "session_id",  # Codex CLI before
)
_AGENT_SESSION_FIELDS = frozenset(header.encode() for header in AGENT_SESSION_HEADERS)


_ATTRIBUTION_FIELDS = {header.encode(): name for header, name in ATTRIBUTION_HEADERS.items()}


def attribution(headers: Mapping[str, str], key_project: str | None = None) -> dict[str, str | None]:
    """The attribution fields from the request headers (`x-project` else the key's project, `key_project`)."""
    fields: dict[str, str | None] = dict.fromkeys(ATTRIBUTION_HEADERS.values())
    raw = getattr(headers, "fields", None)
    if raw is not None:
        # mitmproxy's Headers: one pass over the raw fields costs less than five
        # lookups; repeated headers are joined with ", " as `Headers.get` does.
        for header, value in raw:
            name = _ATTRIBUTION_FIELDS.get(header.lower())
            if name is not None:
                # Bad bytes become U+FFFD: a lone surrogate would make the record unstorable.
                text = value.decode("utf-8", "replace")
                fields[name] = text if fields[name] is None else f"{fields[name]}, {text}"
    else:
        for header, name in ATTRIBUTION_HEADERS.items():
            fields[name] = headers.get(header)
    if fields["execution_id"] is None:
        fields["execution_id"] = _agent_session(headers, raw)
    for name, value in fields.items():
        if value is not None:
            fields[name] = clean_text(value, MAX_ATTRIBUTE)
    if not fields["project"] and key_project is not None:
        fields["project"] = key_project
    return fields


def _agent_session(headers: Mapping[str, str], raw: object) -> str | None:
    """The first agent session header present, in `AGENT_SESSION_HEADERS` order."""
    if isinstance(raw, (list, tuple)):  # mitmproxy's raw header fields: (name, value) bytes pairs
        found = {key.lower(): value for key, value in raw if key.lower() in _AGENT_SESSION_FIELDS}
        for name in AGENT_SESSION_HEADERS:
            raw_value = found.get(name.encode())
            if raw_value is not None:
                return raw_value.decode("utf-8", "surrogateescape")
        return None
    for name in AGENT_SESSION_HEADERS:
        value = headers.get(name)
        if value is not None:
            return value
    return None
