"""Small, valid media files the fake hands out: PNG images, WAV/MP3 audio.

Sizes and durations are real (a PNG is as wide as asked, an MP3 plays for the
stated time) so code that measures media gets the numbers the fake reports.
"""

from __future__ import annotations

import io
import math
import struct
import wave
import zlib
from functools import lru_cache

SPEECH_SECONDS_PER_WORD = 0.4
SPEECH_SAMPLE_RATE = 24_000

_MP3_FRAME_HEADER = bytes((0xFF, 0xFB, 0x90, 0x64))
"""MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no padding, no CRC, joint stereo."""
_MP3_FRAME_BYTES = 417  # 144 * 128000 // 44100
_MP3_FRAME_SECONDS = 1152 / 44_100

AUDIO_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


@lru_cache(maxsize=32)
def png_bytes(width: int, height: int) -> bytes:
    """A solid grey RGB PNG of the given size (cached: sizes repeat)."""
    width = max(1, min(width, 4096))
    height = max(1, min(height, 4096))
    row = b"\x00" + b"\x80" * (3 * width)
    raw = row * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 9)) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def speech_seconds(text: str) -> float:
    return max(1, len(text.split())) * SPEECH_SECONDS_PER_WORD


def speech_audio(text: str, response_format: str) -> bytes:
    """Silent audio lasting `speech_seconds(text)` in the asked format.

    mp3, wav and pcm are real audio; opus, aac and flac are only the right magic
    bytes followed by padding (enough for content sniffing, not for playing).
    """
    seconds = speech_seconds(text)
    if response_format == "wav":
        return wav_bytes(seconds)
    if response_format == "pcm":
        return b"\x00\x00" * int(seconds * SPEECH_SAMPLE_RATE)
    if response_format == "opus":
        return b"OggS" + b"\x00" * (int(seconds * 4000) + 60)
    if response_format == "aac":
        return bytes((0xFF, 0xF1, 0x50, 0x80)) + b"\x00" * int(seconds * 16000)
    if response_format == "flac":
        return b"fLaC" + b"\x00" * int(seconds * 16000)
    return mp3_bytes(seconds)


def mp3_bytes(seconds: float) -> bytes:
    frames = max(1, math.ceil(seconds / _MP3_FRAME_SECONDS))
    frame = _MP3_FRAME_HEADER + b"\x00" * (_MP3_FRAME_BYTES - len(_MP3_FRAME_HEADER))
    return frame * frames


def wav_bytes(seconds: float, sample_rate: int = SPEECH_SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(b"\x00\x00" * int(seconds * sample_rate))
    return buffer.getvalue()


def audio_seconds(data: bytes) -> float:
    """How long an uploaded audio file plays.

    WAV is read with the stdlib `wave` module; other formats with `mutagen` when
    it recognises them; otherwise the size is taken as 16 kHz 16-bit mono PCM.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(data), "rb") as audio:
                return audio.getnframes() / float(audio.getframerate() or 1)
        except (wave.Error, EOFError):
            pass
    try:
        import mutagen
    except ImportError:
        mutagen = None
    if mutagen is not None:
        try:
            parsed = mutagen.File(io.BytesIO(data))
        except Exception:  # mutagen raises many unrelated types on junk input
            parsed = None
        if parsed is not None and getattr(parsed, "info", None) is not None and parsed.info.length:
            return float(parsed.info.length)
    return len(data) / 32_000
