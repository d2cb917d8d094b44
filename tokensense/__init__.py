"""TokenSense: a metering, routing gateway for AI provider APIs, built on mitmproxy."""

from __future__ import annotations

__version__ = "0.1.0"
