"""Gemini's Live API over WebSocket: `/ws/google.ai.generativelanguage.{v1beta,v1alpha}.GenerativeService.BidiGenerateContent`.

The handshake needs the key (`x-goog-api-key` or `?key=`; 401 without it). The
first client message is `setup` (model, `generationConfig.responseModalities`),
answered `setupComplete`. A turn ends with `clientContent.turnComplete` (text
turns) or `realtimeInput.audioStreamEnd` (audio sent as `realtimeInput.audio`,
PCM16 16 kHz). The answer comes as `serverContent.modelTurn` parts (text, or
24 kHz PCM audio with an `outputTranscription`), then `generationComplete`, and
`turnComplete` with the turn's `usageMetadata` by modality, like the real API:
the prompt is the whole session so far (text by word count, audio at 32 tokens a
second), the response its text tokens or its audio at 32 tokens a second.
Each turn is logged like an HTTP request (`"transport": "live"`), each handshake that reaches the
fake as `"transport": "live.handshake"`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

from tokensense.demo.fakeprovider import gemini_format, handshake

PATH_SUFFIX = ".GenerativeService.BidiGenerateContent"
AUDIO_TOKENS_PER_SECOND = 32
INPUT_RATE, OUTPUT_RATE = 16_000, 24_000
SECONDS_PER_WORD = 0.25


def is_upgrade(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("upgrade", "").lower() == "websocket" and \
        request.path.endswith((PATH_SUFFIX, PATH_SUFFIX + "Constrained"))


def _words(text: str) -> int:
    return len(text.split())


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    return obj.get(camel, obj.get(snake))


async def serve(request: web.Request, *, log: deque, state: dict[str, Any]) -> web.StreamResponse:
    prefix = request.path[: request.path.index("/ws/")] if "/ws/" in request.path else ""
    log.append({"method": "GET", "path": request.path, "prefix": prefix.strip("/"), "provider": "gemini",
                "transport": "live.handshake", "query": {k: v for k, v in request.query.items() if k != "key"},
                "time": time.time()})
    controls = handshake.check(request, gemini_format, prefix=prefix, state=state)
    if isinstance(controls, web.Response):
        return controls
    socket = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await socket.prepare(request)
    model: str | None = None
    modalities = ["AUDIO"]
    history = {"TEXT": 0, "AUDIO": 0}  # prompt tokens of the session so far, by modality
    pending_text: list[str] = []
    pending_audio = 0  # bytes of PCM16 since the last turn
    running: asyncio.Task | None = None
    headers = {k.lower(): v for k, v in request.headers.items()}
    async for message in socket:
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        try:
            event = json.loads(message.data)
            if not isinstance(event, dict):
                raise ValueError
        except ValueError:
            await socket.close(code=1007, message=b"Request contains an invalid argument.")
            break
        if "setup" in event:
            setup = event["setup"] or {}
            model = str(setup.get("model") or "").removeprefix("models/")
            config = _get(setup, "generationConfig", "generation_config") or {}
            modalities = [str(m).upper() for m in _get(config, "responseModalities", "response_modalities")
                          or ["AUDIO"]]
            await socket.send_str(json.dumps({"setupComplete": {}}))
            continue
        if model is None:
            await socket.close(code=1007, message=b"The first message must be setup.")
            break
        turn_complete = False
        content = _get(event, "clientContent", "client_content")
        realtime_input = _get(event, "realtimeInput", "realtime_input")
        if isinstance(content, dict):
            for turn in content.get("turns") or []:
                for part in (turn or {}).get("parts") or []:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        pending_text.append(part["text"])
            turn_complete = bool(_get(content, "turnComplete", "turn_complete"))
        elif isinstance(realtime_input, dict):
            audio = realtime_input.get("audio") or {}
            chunks = [audio] + list(_get(realtime_input, "mediaChunks", "media_chunks") or [])
            for chunk in chunks:
                if isinstance(chunk, dict) and chunk.get("data"):
                    try:
                        pending_audio += len(base64.b64decode(chunk["data"]))
                    except ValueError:
                        pass
            if isinstance(realtime_input.get("text"), str):
                pending_text.append(realtime_input["text"])
            turn_complete = bool(_get(realtime_input, "audioStreamEnd", "audio_stream_end"))
        if not turn_complete:
            continue
        history["TEXT"] += sum(_words(t) for t in pending_text) + (2 if pending_text else 0)
        history["AUDIO"] += math.ceil(pending_audio / (2 * INPUT_RATE) * AUDIO_TOKENS_PER_SECOND)
        said = " ".join(pending_text) or "(audio)"
        pending_text, pending_audio = [], 0
        log.append({"method": "WEBSOCKET", "path": request.path, "prefix": prefix.strip("/"), "provider": "gemini",
                    "transport": "live", "query": dict(request.query), "headers": headers, "body": event,
                    "time": time.time()})
        if running is not None and not running.done():
            await running
        running = asyncio.get_running_loop().create_task(
            _answer(socket, model, modalities, said, history, controls.chunk_delay))
    if running is not None and not running.done():
        running.cancel()
    return socket


async def _answer(socket: web.WebSocketResponse, model: str, modalities: list[str], said: str,
                  history: dict[str, int], chunk_delay: float) -> None:
    words = f"Hello from {model}. You said: {said}".split()
    audio = "AUDIO" in modalities
    audio_bytes = 0
    for index, word in enumerate(words):
        piece = word if index == 0 else " " + word
        if audio:
            pcm = bytes(int(2 * OUTPUT_RATE * SECONDS_PER_WORD))
            audio_bytes += len(pcm)
            part = {"inlineData": {"mimeType": f"audio/pcm;rate={OUTPUT_RATE}", "data": base64.b64encode(pcm).decode()}}
            server = {"modelTurn": {"parts": [part]}, "outputTranscription": {"text": piece}}
        else:
            server = {"modelTurn": {"parts": [{"text": piece}]}}
        if socket.closed:
            return
        await socket.send_str(json.dumps({"serverContent": server}))
        if chunk_delay:
            await asyncio.sleep(chunk_delay)
    prompt = {modality: count for modality, count in history.items() if count}
    response_modality = "AUDIO" if audio else "TEXT"
    response_tokens = math.ceil(audio_bytes / (2 * OUTPUT_RATE) * AUDIO_TOKENS_PER_SECOND) if audio else \
        len(words) + 2
    usage = {"promptTokenCount": sum(prompt.values()), "responseTokenCount": response_tokens,
             "totalTokenCount": sum(prompt.values()) + response_tokens,
             "promptTokensDetails": [{"modality": m, "tokenCount": n} for m, n in prompt.items()],
             "responseTokensDetails": [{"modality": response_modality, "tokenCount": response_tokens}]}
    # The answer joins the session: the next turn's prompt includes it (as text: its transcript).
    history["TEXT"] += len(words) + 2
    await socket.send_str(json.dumps({"serverContent": {"generationComplete": True}}))
    await socket.send_str(json.dumps({"serverContent": {"turnComplete": True}, "usageMetadata": usage}))
