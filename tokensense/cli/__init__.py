"""The `tokensense` command line."""

from __future__ import annotations

from tokensense.cli.commands import main

__all__ = ["main"]
