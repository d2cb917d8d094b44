"""Saves TokenSense's flows to a flow file with keys redacted, and makes mitmproxy's own `-w` safe to use."""

from __future__ import annotations

import logging
from functools import partial

from mitmproxy import ctx, exceptions, http

from addons.common import CALL, get_call
from tokensense.flows.recording import (
    RECORD,
    RECORDING,
    FlowFileWriter,
    StreamCapture,
    recording_info,
    redact_keys,
    snapshot,
)
from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)


def _keep_record(flow: http.HTTPFlow, record: UsageCreate) -> None:
    flow.metadata[RECORD] = record.model_dump(mode="json")


def _mitmproxy_saves() -> bool:
    """Whether mitmproxy's own `save` addon writes flows (`-w FILE`)."""
    return "save_stream_file" in ctx.options and bool(ctx.options.save_stream_file)


class Recording:
    """Last in the addon list: sees each call after it is metered.

    `tokensense_record` FILE: every metered call is copied and queued to a
    writer thread that redacts it and appends it to FILE (mitmproxy's flow
    format). Streamed answers are captured as the provider sent them.
    With mitmproxy's own `-w` (`save_stream_file`), the live flow is made
    safe for mitmproxy's writer instead: keys redacted and only serializable
    TokenSense metadata left (body redaction needs `tokensense_record`).
    """

    def __init__(self) -> None:
        self.writer: FlowFileWriter | None = None
        self._captures: dict[str, StreamCapture] = {}

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "tokensense_record", str | None, None,
            "Save every metered call to this file in mitmproxy's flow format, keys redacted "
            "(prefix the path with + to append).",
        )
        loader.add_option(
            "tokensense_redact_bodies", bool, False,
            "With tokensense_record: also replace prompt and answer text in the saved bodies (usage is kept).",
        )

    def configure(self, updated: set[str]) -> None:
        if "tokensense_record" in updated:
            self._close()
            if ctx.options.tokensense_record:
                try:
                    self.writer = FlowFileWriter(ctx.options.tokensense_record)
                except OSError as e:
                    raise exceptions.OptionsError(f"tokensense_record: {e}") from e
                log.info("recording metered calls to %s%s", self.writer.path,
                         " (bodies redacted)" if ctx.options.tokensense_redact_bodies else "")

    def _active(self) -> bool:
        return self.writer is not None or _mitmproxy_saves()

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is not None and self._active():
            call.on_record.append(partial(_keep_record, flow))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is None or not flow.response.stream or not self._active():
            return
        capture = StreamCapture(flow.response.stream)
        flow.response.stream = capture
        self._captures[flow.id] = capture

    def response(self, flow: http.HTTPFlow) -> None:
        self._save(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._save(flow)

    def _save(self, flow: http.HTTPFlow) -> None:
        capture = self._captures.pop(flow.id, None)
        call = get_call(flow)
        record = flow.metadata.get(RECORD)
        saved: dict = {}
        if call is not None and record is not None:
            if capture is not None and flow.response is not None:
                # The answer has been streamed to the client already: this only fills in the flow's body.
                flow.response.raw_content = capture.body()
            info = recording_info(bodies_redacted=bool(ctx.options.tokensense_redact_bodies),
                                  stream_captured=capture is not None and not capture.truncated,
                                  usage_chunk_added=call.usage_chunk_added)
            if self.writer is not None:
                self.writer.submit(snapshot(flow, {RECORD: record, RECORDING: info}),
                                   redact_bodies=ctx.options.tokensense_redact_bodies)
            saved = {RECORD: record, RECORDING: {**info, "bodies_redacted": False}}
        if _mitmproxy_saves():
            # mitmproxy's `save` addon writes this very flow next. The request has gone upstream
            # already, so redacting it changes nothing for the call; the metadata must be serializable.
            redact_keys(flow)
            if CALL in flow.metadata:
                flow.metadata = saved

    def done(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            log.info("recorded %d calls to %s", self.writer.written, self.writer.path)
            self.writer = None
