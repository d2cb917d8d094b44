"""Attribution of a call: the x-workflow-tag, x-step, x-execution-id, x-source and x-project headers."""

from __future__ import annotations

from collections.abc import Mapping

from tokensense.gateway.keys import KeyInfo

ATTRIBUTION_HEADERS = {
    "x-workflow-tag": "workflow",
    "x-step": "step",
    "x-execution-id": "execution_id",
    "x-source": "source",
    "x-project": "project",
}
_MAX_ATTRIBUTE = 200


_ATTRIBUTION_FIELDS = {header.encode(): name for header, name in ATTRIBUTION_HEADERS.items()}


def attribution(headers: Mapping[str, str], key: KeyInfo | None) -> dict[str, str | None]:
    """The attribution fields from the request headers (`x-project` else the key's project)."""
    fields: dict[str, str | None] = dict.fromkeys(ATTRIBUTION_HEADERS.values())
    raw = getattr(headers, "fields", None)
    if raw is not None:
        # mitmproxy's Headers: one pass over the raw fields costs less than five
        # lookups; repeated headers are joined with ", " as `Headers.get` does.
        for header, value in raw:
            name = _ATTRIBUTION_FIELDS.get(header.lower())
            if name is not None:
                text = value.decode("utf-8", "surrogateescape")
                fields[name] = text if fields[name] is None else f"{fields[name]}, {text}"
    else:
        for header, name in ATTRIBUTION_HEADERS.items():
            fields[name] = headers.get(header)
    for name, value in fields.items():
        if value is not None:
            fields[name] = value.strip()[:_MAX_ATTRIBUTE] or None
    if not fields["project"] and key is not None:
        fields["project"] = key.project
    return fields
