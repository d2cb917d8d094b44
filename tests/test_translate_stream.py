"""The translating stream callable: event by event, whatever the chunking, and never an empty chunk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokensense.providers.anthropic import chat as anthropic_translation
from tokensense.providers.chat_stream import TranslatingStream

RAW = (Path(__file__).parent / "fixtures" / "streams" / "anthropic_messages.sse").read_bytes()


@pytest.mark.parametrize("size", [1, 5, 40, 100_000])
def test_any_chunking_gives_the_same_openai_stream_and_no_empty_chunk(size: int) -> None:
    usage: list[dict] = []
    stream = TranslatingStream(anthropic_translation.ChatStreamTranslator(model="claude-x", include_usage=True),
                               on_end=usage.append)
    pieces: list[bytes] = []
    for i in range(0, len(RAW), size):
        out = stream(RAW[i : i + size])
        assert out != b"", "an empty bytes chunk would end a chunked HTTP/1.1 body"
        pieces.extend(out if isinstance(out, list) else [out])
    pieces.append(stream(b""))
    text = b"".join(pieces).decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        "Hello! How can I help?"
    assert chunks[-1]["usage"]["completion_tokens"] == 15
    assert usage and usage[0]["output_tokens"] == 15
