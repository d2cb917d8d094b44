"""Command line: `python -m tokensense.demo.fakeprovider --host 127.0.0.1 --port 0 [--tls-cert F --tls-key F]`.

The first line on stdout is always `fake provider listening on http(s)://HOST:PORT`,
so a parent process can read the port it picked.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

from tokensense.demo.fakeprovider.server import start


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tokensense.demo.fakeprovider",
        description="Fake OpenAI/xAI/Mistral, Anthropic, Gemini and fal server for tests and demos (see docs/fake-provider.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default 0)")
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: serve HTTPS (needs --tls-key)")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together: give both to serve HTTPS, or neither for HTTP")
    return args


def _ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def _serve(args: argparse.Namespace) -> int:
    try:
        context = _ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    except (OSError, ssl.SSLError) as e:
        print(f"fake provider: cannot load the TLS certificate/key ({e}); check --tls-cert and --tls-key", file=sys.stderr)
        return 2
    try:
        runner, url = await start(args.host, args.port, ssl_context=context)
    except OSError as e:
        print(f"fake provider: cannot listen on {args.host}:{args.port} ({e}); pick another --port or use --port 0", file=sys.stderr)
        return 1
    print(f"fake provider listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
