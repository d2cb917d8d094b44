"""Routes, translates and meters the media endpoints (images, image edits and variations, speech, transcriptions,
translations, document OCR) by the providers' media rules."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import ctx, exceptions, http

from addons.common import answer_error, get_call, prepare_upstream, require_credential
from tokensense.core.endpoints import UPLOAD_ENDPOINTS
from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.gateway import media
from tokensense.gateway.call import CallContext
from tokensense.gateway.flowmeta import MEDIA
from tokensense.gateway.routing import MEDIA_ENDPOINTS
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.parse import read_json, resolve
from tokensense.gateway.stream import PassthroughStream
from tokensense.metering.attribution import attribution
from tokensense.metering.media_prices import (
    MediaPriceTable,
    catalog_media_cost,
    load_media_prices,
)
from tokensense.providers import ProviderAdapter
from tokensense.providers.base import AudioReader, AudioStreamUsage, AudioUsage, ImageTranslator, MediaRoute, Upstream

log = logging.getLogger(__name__)

_MB = 1024 * 1024


@dataclass(slots=True)
class MediaCall:
    """One media request, as the response hooks need it."""

    kind: str  # see MediaRoute
    images: ImageTranslator | None = None  # the provider's images translation (translated image routes)
    answer_usage: Callable[[object], TokenUsage] | None = None  # images sent as asked: the answer's usage
    audio: AudioReader | None = None  # speech and transcriptions: how the answers report usage
    size: str | None = None
    quality: str | None = None
    characters: int = 0  # speech input
    audio_format: str = "mp3"  # speech output
    upload: media.FormFile | None = None  # transcription input (a view into the request body)
    stream_usage: AudioStreamUsage | None = None


class _CountingStream:
    """`flow.response.stream` for binary speech audio: passes every chunk on untouched, counting it."""

    def __init__(self, call: CallContext, meter: media.AudioMeter, on_end: Callable[[], None]) -> None:
        self.call = call
        self.meter = meter
        self.on_end = on_end

    def __call__(self, data: bytes) -> bytes:
        if data:
            self.call.mark_first_token()
            self.meter.feed(data)
            return data
        self.on_end()
        return data


class Media:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.max_upload_bytes = media.upload_limit_bytes(None)
        self._prices: MediaPriceTable | None = None
        self._prices_error: str | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        default = media.DEFAULT_MAX_UPLOAD_MB
        try:
            default = media.upload_limit_bytes(os.environ.get("TOKENSENSE_MAX_UPLOAD_MB")) / _MB
        except ValueError as e:
            log.error("%s; using %g MB", e, default)
        loader.add_option("tokensense_max_upload_mb", float, default,
                          "Largest audio upload /v1/audio/transcriptions accepts, in MB "
                          "(default: env TOKENSENSE_MAX_UPLOAD_MB, else 25).")

    def configure(self, updated: set[str]) -> None:
        if "tokensense_max_upload_mb" in updated:
            try:
                self.max_upload_bytes = media.upload_limit_bytes(ctx.options.tokensense_max_upload_mb)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e

    def running(self) -> None:
        self._load_prices()

    @property
    def prices(self) -> MediaPriceTable:
        if self._prices is None:
            self._load_prices()
        assert self._prices is not None
        return self._prices

    def _load_prices(self) -> None:
        self._prices, self._prices_error = load_media_prices(self.runtime.config.media_prices)
        if self._prices_error:
            log.error("%s; media requests are refused until it is fixed", self._prices_error)

    # --- request ------------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.intercepted \
                or call.route_endpoint not in MEDIA_ENDPOINTS:
            return
        if not call.attribution:
            call.attribution = attribution(flow.request.headers, call.key.project if call.key is not None else None)
        try:
            if self._prices is None:  # a script reloaded after `running` has no table yet
                self._load_prices()
            if self._prices_error:
                raise GatewayError(500, f"TokenSense's media prices are invalid ({self._prices_error}).",
                                   code="config_error")
            if call.route_endpoint in UPLOAD_ENDPOINTS:
                self._upload(flow, call)
            else:
                self._json_request(flow, call)
        except GatewayError as e:
            answer_error(flow, call.fmt, e)

    def _resolve(self, call: CallContext, requested: object) -> tuple[ProviderAdapter, str, MediaRoute]:
        call.requested_model = requested if isinstance(requested, str) else None  # kept by a refused call's record
        adapter, model = resolve(requested, self.runtime.prices, media_models=self.prices.models)
        call.provider, call.model = adapter, model
        declared = model in self.runtime.prices.custom or model in self.prices.declared
        return adapter, model, media.media_route(call.route_endpoint.value, adapter.name, model, declared=declared)

    def _json_request(self, flow: http.HTTPFlow, call: CallContext) -> None:
        req = flow.request
        body = read_json(req.raw_content)
        requested = body.get("model")
        adapter, model, route = self._resolve(call, requested)
        state = MediaCall(route.kind, route.images, route.answer_usage, route.audio, size=_str(body.get("size")),
                          quality=_str(body.get("quality")))
        call.stream = body.get("stream") is True
        upstream: dict | None
        if route.images is not None:
            upstream = route.images.request(body)
        else:
            if route.check is not None:
                route.check(model, body)
            if route.kind == "speech":
                text = body.get("input")
                state.characters = len(text) if isinstance(text, str) else 0
                state.audio_format = _str(body.get("response_format")) or "mp3"
            upstream = body if requested != model else None
            if upstream is not None:
                upstream["model"] = model  # `provider/model` names the provider; the provider wants its own name
        credential = require_credential(self.runtime, adapter)
        flow.metadata[MEDIA] = state
        call.sent_body = upstream if upstream is not None else body
        prepare_upstream(call, adapter, credential, Upstream(call.route_endpoint, route.upstream_path),
                         body=json.dumps(upstream, separators=(",", ":")).encode() if upstream is not None else None,
                         content_type="application/json" if upstream is not None else None)

    def _upload(self, flow: http.HTTPFlow, call: CallContext) -> None:
        """A multipart upload: audio to transcribe or translate (`file`), an image to edit or vary (`image`)."""
        req = flow.request
        raw = req.raw_content or b""
        if len(raw) > self.max_upload_bytes:
            raise GatewayError(413, f"The upload is {len(raw) / _MB:.1f} MB; TokenSense accepts uploads of up "
                               f"to {self.max_upload_bytes / _MB:g} MB (TOKENSENSE_MAX_UPLOAD_MB).",
                               code="request_too_large", param="file")
        form = media.parse_form(raw, req.headers.get("content-type", ""))
        requested = form.fields.get("model")
        adapter, model, route = self._resolve(call, requested)
        audio = route.kind == "transcription"
        part = "file" if audio else next((name for name in ("image", "image[]") if name in form.files), "image")
        upload = form.files.get(part)
        if upload is None or not len(upload.data):
            what = "audio: send it as the multipart `file` part" if audio else \
                "image: send it as the multipart `image` part"
            raise GatewayError(400, f"The request has no {what}.", code="missing_parameter", param=part)
        call.stream = form.fields.get("stream", "").lower() == "true"
        credential = require_credential(self.runtime, adapter)
        if requested != model:
            del upload, form.files[part]  # release the view into the old body before it is replaced
            req.content = media.replace_field(raw, form, "model", model)
            form = media.parse_form(req.raw_content or b"", req.headers.get("content-type", ""))
            upload = form.files[part]
        if audio:
            flow.metadata[MEDIA] = MediaCall(route.kind, audio=route.audio, upload=upload)
        else:  # an image edit or variation: priced like generations (tokens, else per image by size)
            flow.metadata[MEDIA] = MediaCall("images", answer_usage=route.answer_usage,
                                             size=form.fields.get("size"), quality=form.fields.get("quality"))
        prepare_upstream(call, adapter, credential, Upstream(call.route_endpoint, route.upstream_path))

    # --- response -----------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state: MediaCall | None = flow.metadata.get(MEDIA)
        call = get_call(flow)
        response = flow.response
        if state is None or call is None or response is None or response.stream \
                or not 200 <= response.status_code < 300:
            return
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            if state.kind in ("speech", "transcription") and state.audio is not None:
                # gpt-4o-mini-tts `stream_format: sse` and transcription `stream: true` report token usage in their
                # last event; meter it here (not in the metering addon) to add the audio-token price and units.
                call.stream = True
                state.stream_usage = state.audio.stream()
                call.stream_usage = state.stream_usage
                response.stream = PassthroughStream(call, state.stream_usage, (b'"usage"',), drop_usage_chunk=False,
                                                    on_end=lambda: self._finish_audio(call, state))
            return
        if state.kind == "speech":
            call.stream = True
            meter = media.AudioMeter(state.audio_format, state.audio.pcm_bytes_per_second if state.audio else None)
            response.stream = _CountingStream(call, meter, lambda: self._finish_speech(call, state, meter))

    def response(self, flow: http.HTTPFlow) -> None:
        state: MediaCall | None = flow.metadata.get(MEDIA)
        call = get_call(flow)
        response = flow.response
        if state is None or call is None or response is None or call.recorded or response.stream:
            return
        if call.status is not None:  # answered by TokenSense itself (a policy refusal): already OpenAI-shaped
            state.upload = None
            return
        try:
            if state.images is not None:  # translated to the OpenAI images format
                self._translate_images(response, call, state)
            elif response.status_code < 300 and state.kind == "images":
                self._meter_images(response, call, state)
            elif response.status_code < 300 and state.kind == "pages":
                self._meter_pages(response, call, state)
            elif response.status_code < 300 and state.kind == "transcription":
                self._finish_audio(call, state, content=response.content or b"",
                                   content_type=response.headers.get("content-type", ""))
        finally:
            state.upload = None

    def _translate_images(self, response: http.Response, call: CallContext, state: MediaCall) -> None:
        assert state.images is not None
        content = response.content or b""
        if response.status_code >= 400:
            error = state.images.error(response.status_code, content)
            call.error = str(error["error"].get("message"))[:300]
            _set_json(response, error)
            return
        try:
            answer = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            name = call.provider.display_name if call.provider else "The provider"
            call.error = f"{name} answered with a body that is not JSON"
            response.status_code = 502
            _set_json(response, {"error": {"message": call.error, "type": "api_error", "param": None,
                                           "code": "upstream_error"}})
            return
        translated = state.images.answer(answer)
        _set_json(response, translated.body)
        count = len(translated.body["data"])
        assert call.model is not None
        call.usage = TokenUsage(images=count)
        call.media_cost = self.prices.image_cost(call.model, count=count, size=state.size,
                                                          quality=state.quality, pixels=translated.pixels)

    def _meter_images(self, response: http.Response, call: CallContext, state: MediaCall) -> None:
        """An images answer as the provider sent it: its usage as the route reads it (tokens, else the image count)."""
        try:
            answer = json.loads(response.content or b"")
        except (ValueError, UnicodeDecodeError):
            return
        if state.answer_usage is None:
            return
        usage = state.answer_usage(answer)
        assert call.provider is not None and call.model is not None
        call.usage = usage
        if usage.has_tokens:  # gpt-image: priced by its tokens, image tokens included (in `usage.units`)
            call.media_cost = None
        else:
            size = _str(answer.get("size")) or state.size
            quality = _str(answer.get("quality")) or state.quality
            call.media_cost = self.prices.image_cost(call.model, count=usage.images, size=size,
                                                              quality=quality)

    def _meter_pages(self, response: http.Response, call: CallContext, state: MediaCall) -> None:
        """A document OCR answer: priced per page processed, as the answer's usage says (the catalog's page rate,
        else the media table's `per_thousand_pages` for a model only config.toml knows)."""
        assert call.provider is not None and call.model is not None
        try:
            answer = json.loads(response.content or b"")
        except (ValueError, UnicodeDecodeError):
            answer = None
        usage = state.answer_usage(answer) if state.answer_usage is not None else TokenUsage()
        if not isinstance(answer, dict):
            call.usage_unknown = True  # a page count it cannot read: unpriced, never $0
        if self.runtime.prices.knows(call.provider.prices_id, call.model):
            call.usage = usage  # the pages are a unit the catalog prices
            return
        pages = usage.units.get("input_document_pages", 0)
        call.usage = TokenUsage(counters={"input_document_pages": pages} if pages else {})
        call.media_cost = self.prices.page_cost(call.model, pages)
        if call.media_cost is None:
            call.usage_unknown = True

    def _finish_speech(self, call: CallContext, state: MediaCall, meter: media.AudioMeter) -> None:
        assert call.provider is not None and call.model is not None
        seconds = meter.seconds()
        call.usage = TokenUsage(characters=state.characters, seconds=round(seconds, 3) if seconds else 0.0)
        if self.prices.get(call.model) is not None:
            cost = self.prices.speech_cost(call.model, characters=state.characters, seconds=seconds)
        else:
            cost = catalog_media_cost(call.provider.prices_id, call.model, characters=state.characters)
        call.media_cost = cost

    def _finish_audio(self, call: CallContext, state: MediaCall, *, content: bytes = b"",
                      content_type: str = "") -> None:
        """Usage and cost of a transcription (or an SSE speech stream), once its answer is complete."""
        assert call.provider is not None and call.model is not None
        if state.stream_usage is not None:
            audio = state.stream_usage.usage
        else:
            audio = state.audio.answer(content, content_type) if state.audio is not None else AudioUsage()
        measured = None
        if audio.duration is None and audio.billed_seconds is None and state.upload is not None:
            measured = media.audio_seconds(state.upload.data, state.upload.filename)
        seconds = media.billed_seconds(audio, measured)
        usage = (audio.tokens or TokenUsage()).model_copy(update={
            "seconds": round(seconds, 3) if seconds else 0.0,
            "characters": state.characters,
        })
        call.usage = usage
        if usage.has_tokens:  # gpt-4o transcribe: priced by its tokens, audio tokens included (in `usage.units`)
            cost = None
        elif state.kind == "speech":
            cost = self.prices.speech_cost(call.model, characters=state.characters, seconds=seconds)
        elif seconds is None:
            cost = 0.0
        elif self.prices.get(call.model) is not None:
            cost = self.prices.minute_cost(call.model, seconds)
        else:
            cost = catalog_media_cost(call.provider.prices_id, call.model, seconds=seconds)
        call.media_cost = cost
        state.upload = None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _set_json(response: http.Response, body: dict) -> None:
    response.headers["content-type"] = "application/json"
    response.content = json.dumps(body, separators=(",", ":")).encode()
