"""`tokensense serve`: mitmproxy's mitmdump with the TokenSense addons, in reverse-proxy mode (see gateway/master.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tokensense.settings import get_settings

PLACEHOLDER_UPSTREAM = "http://127.0.0.1:9"


def entry_script() -> Path:
    """Path of the mitmproxy script `addons/tokensense.py`."""
    import addons

    return Path(addons.__file__).resolve().parent / "tokensense.py"


def mitmdump_args(args: argparse.Namespace) -> list[str]:
    """The mitmdump command line that `tokensense serve` runs in-process."""
    argv = [
        "-s", str(entry_script()),
        "--mode", f"reverse:{PLACEHOLDER_UPSTREAM}@{args.port}",
        "--listen-host", args.host,
        "--set", "connection_strategy=lazy",
        # Per-flow lines cost time on every request; TokenSense keeps its own records.
        "--set", "flow_detail=0",
    ]
    if getattr(args, "intercept", False):
        from tokensense.gateway.intercept import intercept_mode_args

        argv += intercept_mode_args(args)
    if getattr(args, "metrics_port", None):
        # `serve --workers N`: worker i serves its own metrics on PORT + i - 1 (scrape each).
        port = args.metrics_port + int(os.environ.get("TOKENSENSE_WORKER") or 1) - 1
        argv += ["--set", f"tokensense_metrics_port={port}",
                 "--set", f"tokensense_metrics_host={args.metrics_host or args.host}"]
    if getattr(args, "record", None):
        argv += ["--set", f"tokensense_record={args.record}"]
        if getattr(args, "redact_bodies", False):
            argv += ["--set", "tokensense_redact_bodies=true"]
    return argv + list(getattr(args, "mitm_args", []) or [])


def run_server(args: argparse.Namespace) -> int:
    from tokensense.gateway.master import run_gateway

    settings = get_settings()
    if not os.environ.get("TOKENSENSE_WORKER"):  # a worker of `serve --workers N`: the supervisor said it
        print(f"TokenSense gateway on http://{args.host}:{args.port} (home: {settings.home}); Ctrl+C stops it.",
              flush=True)
    run_gateway(mitmdump_args(args))
    return 0
