"""Media endpoints as pure functions: multipart forms, audio lengths, which provider serves which media call.

The providers own their media rules (`Provider.media_route`): image translations, request checks, and how
their answers report usage; the media addon asks the route.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from email.message import Message
from typing import Any, NamedTuple

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.providers import PROVIDERS, get_provider
from tokensense.providers.base import AudioUsage, MediaRoute

DEFAULT_MAX_UPLOAD_MB = 25.0  # the usual provider limit for an audio upload (/v1/audio/transcriptions)


# --- multipart forms ------------------------------------------------------------------------


class FormFile(NamedTuple):
    filename: str | None
    content_type: str | None
    data: memoryview  # a view into the request body: the upload is not copied


class Form(NamedTuple):
    fields: dict[str, str]
    files: dict[str, FormFile]
    spans: dict[str, tuple[int, int]]  # where each field's value lies in the body


def _header_params(name: str, value: str) -> Message:
    message = Message()
    message[name] = value
    return message


def parse_form(body: bytes, content_type: str) -> Form:
    """A `multipart/form-data` body, parsed once, files as memoryviews into `body`.

    Field values are decoded as UTF-8; a field repeated keeps its last value
    (`timestamp_granularities[]` and the like are read by the provider, not here).
    """
    header = _header_params("content-type", content_type or "")
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        raise GatewayError(400, "Send the audio as multipart/form-data (a `file` part and a `model` field).",
                           code="invalid_body")
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    fields: dict[str, str] = {}
    files: dict[str, FormFile] = {}
    spans: dict[str, tuple[int, int]] = {}
    pos = body.find(delimiter)
    if pos < 0:
        raise GatewayError(400, "The multipart body has no part with its boundary.", code="invalid_body")
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            break
        headers_end = body.find(b"\r\n\r\n", pos)
        if headers_end < 0:
            raise GatewayError(400, "A multipart part has no end of headers.", code="invalid_body")
        part_headers: dict[str, str] = {}
        for line in body[pos:headers_end].decode("utf-8", errors="replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                part_headers[key.strip().lower()] = value.strip()
        start = headers_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise GatewayError(400, "The multipart body ends before its closing boundary.", code="invalid_body")
        disposition = _header_params("content-disposition", part_headers.get("content-disposition", ""))
        name = disposition.get_param("name", header="content-disposition")
        filename = disposition.get_filename()
        if isinstance(name, str):
            if filename is not None or name == "file":
                files[name] = FormFile(filename, part_headers.get("content-type"), view[start:end])
            else:
                fields[name] = body[start:end].decode("utf-8", errors="replace")
                spans[name] = (start, end)
        pos = end + 2
    return Form(fields, files, spans)


def replace_field(body: bytes, form: Form, name: str, value: str) -> bytes:
    """`body` with the value of field `name` replaced (one copy of the body; only for `provider/model`)."""
    start, end = form.spans[name]
    return b"".join((body[:start], value.encode(), body[end:]))


# --- audio lengths --------------------------------------------------------------------------


class MemoryReader(io.RawIOBase):
    """A read-only file over a memoryview, so audio parsers read an upload without copying it."""

    def __init__(self, data: memoryview | bytes, name: str | None = None) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.name = name or ""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data[self._pos:self._pos + len(buffer)]
        buffer[:len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def audio_seconds(data: memoryview | bytes, filename: str | None = None) -> float | None:
    """How long an uploaded audio file plays: WAV with `wave`, other formats with `mutagen`; None if unknown."""
    head = bytes(data[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        try:
            with wave.open(MemoryReader(data), "rb") as audio:
                rate = audio.getframerate()
                return audio.getnframes() / rate if rate else None
        except (wave.Error, EOFError):
            pass  # WAV variants `wave` does not read (float, extensible): mutagen may
    import mutagen

    try:
        parsed = mutagen.File(MemoryReader(data, filename))
    except Exception:  # mutagen raises many unrelated types on files it cannot read
        return None
    length = getattr(getattr(parsed, "info", None), "length", None)
    return float(length) if length else None


_MP3_BITRATES = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1 Layer III
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2 Layer III
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mp3_seconds(head: bytes, total: int) -> float | None:
    """Length of an MP3 of `total` bytes from its first bytes: the Xing/Info frame count, else the CBR bitrate."""
    offset = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        offset = 10 + size + (10 if head[5] & 0x10 else 0)
    sync = head.find(b"\xff", offset)
    while 0 <= sync < len(head) - 4 and (head[sync + 1] & 0xE0) != 0xE0:
        sync = head.find(b"\xff", sync + 1)
    if sync < 0 or sync > len(head) - 4:
        return None
    (word,) = struct.unpack(">I", head[sync:sync + 4])
    version = (word >> 19) & 0x3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    layer = (word >> 17) & 0x3  # 1: Layer III
    bitrate_index = (word >> 12) & 0xF
    rate_index = (word >> 10) & 0x3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    sample_rate = _MP3_RATES[version][rate_index]
    samples = 1152 if version == 3 else 576
    mono = (word >> 6) & 0x3 == 3
    side = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    xing = sync + 4 + side
    if head[xing:xing + 4] in (b"Xing", b"Info") and len(head) >= xing + 12:
        flags = struct.unpack(">I", head[xing + 4:xing + 8])[0]
        if flags & 1:
            frames = struct.unpack(">I", head[xing + 8:xing + 12])[0]
            return frames * samples / sample_rate
    bitrate = _MP3_BITRATES[3 if version == 3 else 2][bitrate_index] * 1000
    return (total - sync) * 8 / bitrate


def wav_seconds(head: bytes, total: int) -> float | None:
    """Length of a WAV of `total` bytes from its header (streamed WAVs often say 0 or 0xFFFFFFFF sizes)."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        kind, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if kind == b"fmt " and pos + 16 <= len(head):
            byte_rate = struct.unpack("<I", head[pos + 16:pos + 20])[0]
        if kind == b"data":
            return (total - pos - 8) / byte_rate if byte_rate else None
        pos += 8 + size + (size & 1)
    return None


class AudioMeter:
    """Counts the bytes of a streamed audio answer and keeps its first few KB, to tell its length at the end."""

    HEAD = 8192

    def __init__(self, audio_format: str, pcm_bytes_per_second: int | None = None) -> None:
        self.format = audio_format
        self.pcm_bytes_per_second = pcm_bytes_per_second  # the provider's raw `pcm` (rate x sample size)
        self.total = 0
        self.head = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if len(self.head) < self.HEAD:
            self.head += chunk[:self.HEAD - len(self.head)]

    def seconds(self) -> float | None:
        """The length, for mp3, wav and (at the provider's rate) pcm; None for formats whose length needs the
        whole file."""
        if self.total == 0:
            return None
        if self.format == "pcm":
            return self.total / self.pcm_bytes_per_second if self.pcm_bytes_per_second else None
        if self.format == "wav":
            return wav_seconds(bytes(self.head), self.total)
        if self.format == "mp3":
            return mp3_seconds(bytes(self.head), self.total)
        return None


# --- transcription and speech answers -------------------------------------------------------


def billed_seconds(usage: AudioUsage, measured: float | None) -> float | None:
    """The audio length to meter: verbose_json's duration, else the provider's billed seconds, else measured."""
    for seconds in (usage.duration, usage.billed_seconds, measured):
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def upload_limit_bytes(value: str | float | None) -> int:
    """`TOKENSENSE_MAX_UPLOAD_MB` in bytes (default 25 MB, like OpenAI); a ValueError that says what is wrong."""
    if value is None or value == "":
        return int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024)
    try:
        megabytes = float(value)
    except ValueError:
        raise ValueError(f"TOKENSENSE_MAX_UPLOAD_MB must be a number of megabytes, not {value!r}") from None
    if not math.isfinite(megabytes) or megabytes <= 0:
        raise ValueError(f"TOKENSENSE_MAX_UPLOAD_MB must be more than 0, not {value!r}")
    return int(megabytes * 1024 * 1024)


# --- which provider serves which media endpoint ---------------------------------------------


def media_route(endpoint: str, provider: str, model: str, *, declared: bool = False) -> MediaRoute:
    """Where a media request for `model` of `provider` goes, or a 400 naming the model.

    `endpoint` is the `Endpoint` value; the provider decides. A model declared in
    config.toml skips the name checks (its provider is taken at its word).
    """
    adapter = get_provider(provider)
    kind = Endpoint(endpoint)
    route = adapter.media_route(kind, model, declared=declared) if adapter is not None else None
    if route is not None:
        return route
    served = list(dict.fromkeys(d for p in PROVIDERS.values() if (d := p.media_models(kind)) is not None))
    takes = f"{', '.join(served[:-1])} and {served[-1]}" if len(served) > 1 else served[0] if served else "no"
    raise GatewayError(400, f"The model `{model}` ({provider}) is not served on /v1/{endpoint.replace('.', '/')}: "
                       f"it takes {takes} models.", code="unsupported_model_for_endpoint", param="model")
