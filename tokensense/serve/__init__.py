"""Serving processes: `tokensense serve` (mitmdump with the TokenSense addons) and its worker supervisor."""
