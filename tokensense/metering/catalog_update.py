"""The genai-prices catalog in force: the snapshot bundled with the package, or a newer one fetched on demand.

`tokensense prices update` downloads genai-prices' published data (the URL and
parser its own `UpdatePrices` uses) and saves it under `TOKENSENSE_HOME`; the
gateway, `reprice` and `prices` load that file at start-up. Prices are never
fetched while serving requests, and the bundled snapshot stays the fallback:
a missing or unreadable file means the bundled catalog is used.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from genai_prices import data_snapshot
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.update_prices import DEFAULT_UPDATE_URL

log = logging.getLogger(__name__)

CATALOG_FILE = "genai-prices.json"


class CatalogUpdateError(RuntimeError):
    """The catalog could not be fetched or read (the message is one line for the user)."""


def catalog_path(home: Path) -> Path:
    return home / "prices" / CATALOG_FILE


def _parse(raw: Any) -> list:
    # The parser genai-prices' own UpdatePrices.fetch applies to the same data.
    from genai_prices.types import _providers_from_raw

    if not isinstance(raw, list):
        raise ValueError("expected a list of providers")
    return _providers_from_raw(raw)


def fetch_catalog(home: Path, *, url: str = DEFAULT_UPDATE_URL, timeout: float = 15.0) -> tuple[Path, int, int]:
    """Download the current catalog, check it parses, save it; (file, providers, models).

    Raises `CatalogUpdateError` with a one-line reason when the network or the data fails.
    """
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPStatusError as e:
        raise CatalogUpdateError(f"could not fetch the price catalog from {url}: HTTP {e.response.status_code}; "
                                 "the catalog in use is unchanged") from None
    except httpx.HTTPError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CatalogUpdateError(f"could not reach {url} ({reason}); no network? The catalog in use is unchanged "
                                 "(bundled, or the last update).") from None
    try:
        raw = json.loads(response.content)
        providers = _parse(raw)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CatalogUpdateError(f"{url} did not answer a genai-prices catalog ({first}); "
                                 "the catalog in use is unchanged") from None
    path = catalog_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {"fetched_at": datetime.now(UTC).isoformat(), "url": url, "providers": raw}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, separators=(",", ":")))
    os.replace(tmp, path)
    return path, len(providers), sum(len(p.models) for p in providers)


def load_saved_catalog(home: Path) -> DataSnapshot | None:
    """The catalog `tokensense prices update` saved, or None (none saved, or unreadable: logged)."""
    path = catalog_path(home)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        providers = _parse(saved["providers"])
        fetched = datetime.fromisoformat(saved["fetched_at"])
    except Exception as e:
        log.warning("ignoring the saved price catalog %s (%s: %s); using the bundled one",
                    path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None
    snapshot = DataSnapshot(providers, from_auto_update=True)
    snapshot.timestamp = fetched.astimezone(UTC).replace(tzinfo=None)
    return snapshot


def install_catalog(home: Path) -> DataSnapshot:
    """Make the saved catalog (if any) the one genai-prices uses in this process; return the catalog in force.

    Call at start-up only (it reads and parses a file).
    """
    snapshot = load_saved_catalog(home)
    data_snapshot.set_custom_snapshot(snapshot)
    return data_snapshot.get_snapshot()
