"""OpenAI's audio answers (`/v1/audio/speech`, `/v1/audio/transcriptions`): the usage they report.

Transcriptions in `json`/`verbose_json` carry `usage` (`{"type": "duration", "seconds"}` for whisper,
tokens for the gpt-4o transcribe models) and verbose_json a `duration`; text, srt and vtt carry nothing.
Streams (transcription `stream: true`, speech `stream_format: sse`) report usage in their last event
(`transcript.text.done`, `speech.audio.done`).
"""

from __future__ import annotations

import json
from typing import Any

from tokensense.core.usage import TokenUsage
from tokensense.providers.base import AudioReader, AudioStreamUsage, AudioUsage
from tokensense.providers.openai_usage import usage_from_openai


def audio_usage_from(usage: Any, duration: Any = None) -> AudioUsage:
    """OpenAI's audio `usage` object (and verbose_json's `duration`) in TokenSense terms."""
    seconds = float(duration) if isinstance(duration, int | float) and not isinstance(duration, bool) else None
    if not isinstance(usage, dict):
        return AudioUsage(duration=seconds)
    if usage.get("type") == "duration":
        billed = usage.get("seconds")
        if isinstance(billed, int | float) and not isinstance(billed, bool) and billed >= 0:
            return AudioUsage(seconds, float(billed))
        return AudioUsage(seconds, None)
    if "input_tokens" not in usage and "output_tokens" not in usage:
        return AudioUsage(duration=seconds)
    tokens = usage_from_openai(usage) or TokenUsage()
    return AudioUsage(seconds, None, tokens, tokens.units.get("input_audio_tokens", 0))


def transcription_usage(content: bytes, content_type: str) -> AudioUsage:
    """Usage from an unstreamed transcription answer: json and verbose_json carry it, text/srt/vtt do not."""
    if "json" not in content_type:
        return AudioUsage()
    try:
        answer = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return AudioUsage()
    if not isinstance(answer, dict):
        return AudioUsage()
    return audio_usage_from(answer.get("usage"), answer.get("duration"))


class AudioEventsUsage(AudioStreamUsage):
    """Usage from an audio SSE stream: `transcript.text.done` and `speech.audio.done` carry it."""

    def __init__(self) -> None:
        self.usage = AudioUsage()

    def feed(self, event: str | None, data: dict) -> None:
        if isinstance(data.get("usage"), dict):
            self.usage = audio_usage_from(data["usage"])

    def result(self) -> TokenUsage:
        return self.usage.tokens or TokenUsage()


PCM_BYTES_PER_SECOND = 24_000 * 2  # speech `response_format: pcm`: 24 kHz, 16-bit, mono, no header

AUDIO = AudioReader(answer=transcription_usage, stream=AudioEventsUsage, pcm_bytes_per_second=PCM_BYTES_PER_SECOND)
