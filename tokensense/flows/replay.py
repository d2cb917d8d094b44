"""`tokensense replay FILE`: serves the provider answers saved in a flow file with mitmproxy's server replay."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from pathlib import Path

from mitmproxy import ctx, http

from tokensense.flows.recording import RECORDING, SECRET_HEADERS, SECRET_PARAMS, read_flow_file
from tokensense.metering.sse import EventSplitter, parse_event

PLACEHOLDER_UPSTREAM = "http://127.0.0.1:9"  # never contacted: an unmatched request is answered 404
# The provider's own API path starts here; anything before it is a base-URL prefix of the recording.
_API_PATH = re.compile(r"/(?:v1|v1beta|v1alpha)/|/fal-ai/")


def drop_usage_chunk(body: bytes) -> bytes:
    """An OpenAI-format SSE body without the usage-only chunk (`choices: []` with `usage`).

    The recording keeps that chunk because TokenSense asked upstream for it; the
    client had not, and did not see it then.
    """
    splitter = EventSplitter()
    events = splitter.feed(body)
    if rest := splitter.rest():
        events.append(rest)
    kept = []
    for raw in events:
        _, payload = parse_event(raw)
        if payload and payload.startswith("{") and b'"usage"' in raw:
            try:
                data = json.loads(payload)
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get("usage") and not data.get("choices"):
                continue
        kept.append(raw)
    return b"".join(kept)


def replayable(flow: object, *, scheme: str = "http") -> http.HTTPFlow | None:
    """A saved call made ready for server replay to base-URL clients, or None if it has no answer.

    The request's scheme becomes the replay server's and a base-URL prefix is
    cut from its path (`/openai/v1/chat/completions` → `/v1/chat/completions`);
    TokenSense's own response headers and the usage chunk it added are removed.
    """
    if not isinstance(flow, http.HTTPFlow) or flow.response is None:
        return None
    request, response = flow.request, flow.response
    request.scheme = scheme
    path, sep, query = request.path.partition("?")
    if (m := _API_PATH.search(path)) and m.start() > 0:
        request.path = path[m.start():] + sep + query
    for name in {n.lower() for n in response.headers if n.lower().startswith("x-tokensense-")}:
        del response.headers[name]
    info = flow.metadata.get(RECORDING)
    if isinstance(info, dict) and info.get("usage_chunk_added") and \
            response.headers.get("content-type", "").startswith("text/event-stream"):
        response.raw_content = drop_usage_chunk(response.raw_content or b"")
    flow.metadata = {}
    return flow


def replay_args(args: argparse.Namespace) -> list[str]:
    """The mitmdump options for `tokensense replay`: a reverse proxy that only answers from the recording.

    Requests are matched on method and path (and query, without `key`), not on
    host, port or body: a recorded body may differ from what the client sends
    (TokenSense adds `stream_options`; `--redact-bodies` replaces text). Each
    recorded answer is served once, in order, unless `--reuse`; anything
    unmatched gets a 404 and nothing is forwarded.
    """
    return [
        "--mode", f"reverse:{PLACEHOLDER_UPSTREAM}@{args.port}",
        "--listen-host", args.host,
        "--set", "connection_strategy=lazy",
        "--set", "server_replay_ignore_host=true",
        "--set", "server_replay_ignore_port=true",
        "--set", "server_replay_ignore_content=true",
        "--set", "server_replay_ignore_params=key",
        "--set", "server_replay_extra=404",
        "--set", f"server_replay_reuse={'true' if args.reuse else 'false'}",
        "--set", "flow_detail=1",
    ]


class StripKeys:
    """Removes keys from each incoming request before anything (the matching, the log) sees it."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        for name in SECRET_HEADERS:
            flow.request.headers.pop(name, None)
        for name in SECRET_PARAMS:
            if name in flow.request.query:
                del flow.request.query[name]


class LoadRecording:
    """Hands the prepared flows to mitmproxy's server replay once the options are final."""

    def __init__(self, flows: list[http.HTTPFlow]) -> None:
        self.flows = flows

    def running(self) -> None:
        ctx.master.addons.get("serverplayback").load_flows(self.flows)


def prepare(flows: Iterable[object]) -> list[http.HTTPFlow]:
    return [f for f in (replayable(flow) for flow in flows) if f is not None]


def run_replay(args: argparse.Namespace) -> int:
    from mitmproxy.tools import cmdline
    from mitmproxy.tools.dump import DumpMaster
    from mitmproxy.tools.main import run

    path = Path(args.file)
    if not path.is_file():
        raise ValueError(f"no flow file at {path}")
    flows = prepare(read_flow_file(path))
    if not flows:
        raise ValueError(f"{path} holds no recorded answer to replay")

    class ReplayMaster(DumpMaster):
        def __init__(self, options, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(options, **kwargs)
            self.addons.add(StripKeys(), LoadRecording(flows))

    print(f"TokenSense replay of {len(flows)} recorded answers from {path} on http://{args.host}:{args.port} "
          "(unmatched requests: 404); Ctrl+C stops it.", flush=True)
    run(ReplayMaster, cmdline.mitmdump, replay_args(args))
    return 0
