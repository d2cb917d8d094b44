"""A fake AI provider server speaking the OpenAI, Anthropic, Gemini and fal wire formats.

Run it with `python -m tokensense.demo.fakeprovider --port 0` (or `scripts/fake-provider`),
or in-process with `runner, url = await start("127.0.0.1", 0)`. Behaviour, control
headers and the token formula are described in docs/fake-provider.md.
"""

from __future__ import annotations

from tokensense.demo.fakeprovider.server import create_app, start

__all__ = ["create_app", "start"]
