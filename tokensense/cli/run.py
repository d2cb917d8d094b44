"""`tokensense serve|addon-path|dashboard|demo|reprice|replay`: commands that run something implemented in its own module."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokensense.cli.common import FORMATTER, Unavailable, port, positive_float, print_json, seconds, workers


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from tokensense.serve.server import run_server
    except ImportError as e:
        raise Unavailable("serve", e) from e
    if getattr(args, "workers", 1) > 1:
        from tokensense.serve.workers import run_supervisor

        return run_supervisor(args)
    return run_server(args) or 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        if args.web:
            from tui.web import run_web as run_dashboard
        else:
            from tui.app import run as run_dashboard
    except ImportError as e:
        raise Unavailable("dashboard", e) from e
    return run_dashboard(args) or 0


def _cmd_addon_path(args: argparse.Namespace) -> int:
    import addons

    print(Path(addons.__file__).with_name("tokensense.py"))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from tokensense.demo.traffic import run_demo
    except ImportError as e:
        raise Unavailable("demo", e) from e
    return run_demo(args) or 0


def _cmd_reprice(args: argparse.Namespace) -> int:
    from tokensense.flows.reprice import format_report, reprice_file

    report = reprice_file(args.file)
    if args.json:
        print_json(report.model_dump(mode="json"))
    else:
        print(format_report(report))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from tokensense.flows.replay import run_replay

    return run_replay(args) or 0


def add_run_parsers(
    commands: argparse._SubParsersAction, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Register `serve`, `addon-path`, `dashboard`, `demo`, `reprice` and `replay`."""
    # serve
    serve = commands.add_parser(
        "serve", help="run the gateway (mitmproxy in reverse-proxy mode)", formatter_class=FORMATTER,
        usage="tokensense serve [options] [-- MITMPROXY_ARGS...]",
        description="Run the gateway. Point an SDK's base URL at http://HOST:PORT and use a TokenSense key.",
        epilog="Arguments after `--` go to mitmproxy unchanged, e.g.\n  tokensense serve -- --set flow_detail=2",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=port, default=8080, help="port to listen on (default: 8080)")
    serve.add_argument("--intercept", action="store_true", help="also run a regular proxy for HTTPS_PROXY clients")
    serve.add_argument("--intercept-port", metavar="PORT", type=port, help="port of the regular (HTTPS_PROXY) proxy (default: the gateway port + 1)")
    serve.add_argument("--record", metavar="FILE", help="save flows to FILE (keys redacted)")
    serve.add_argument("--redact-bodies", action="store_true", help="also leave request and response bodies out of FILE")
    serve.add_argument("--workers", metavar="N", type=workers, default=1,
                       help="gateway processes on the one port, or `auto` for one per core (default: 1)")
    serve.add_argument("--drain-timeout", metavar="SECONDS", type=float, default=30.0,
                       help="with --workers: how long a stop waits for the workers' calls to finish (default: 30)")
    serve.add_argument("--metrics-port", metavar="PORT", type=port, help="serve Prometheus metrics at /metrics on PORT")
    serve.add_argument("--metrics-host", metavar="HOST", help="address of the metrics server (default: --host)")
    serve.set_defaults(handler=_cmd_serve, mitm_args=[])

    # addon-path
    addon_path = commands.add_parser(
        "addon-path", help="print the path of the mitmproxy script (mitmdump -s \"$(tokensense addon-path)\")",
        formatter_class=FORMATTER,
        description="Print the path of TokenSense's mitmproxy entry script in the installed package, for running "
        "the gateway as a plain mitmproxy script.",
        epilog='example:\n  mitmdump -s "$(tokensense addon-path)" --set tokensense_metrics_port=9464',
    )
    addon_path.set_defaults(handler=_cmd_addon_path)

    # dashboard
    dashboard = commands.add_parser(
        "dashboard", parents=[database], help="live spend dashboard in the terminal, or in a browser with --web",
        formatter_class=FORMATTER,
        description="Live spend by workflow, step, model, provider, project and key. With --web, the same "
        "dashboard is served to browsers (read-only), only to who gives the dashboard token: "
        "TOKENSENSE_DASHBOARD_TOKEN, or an admin key (`tokensense keys create NAME --admin`).",
        epilog="examples:\n  tokensense dashboard\n"
        "  TOKENSENSE_DASHBOARD_TOKEN=$(openssl rand -hex 24) tokensense dashboard --web --port 8090\n"
        "  # then open http://127.0.0.1:8090/?token=...",
    )
    dashboard.add_argument("--web", action="store_true", help="serve the dashboard to browsers instead")
    dashboard.add_argument("--host", default="127.0.0.1", help="with --web: address to listen on (default: 127.0.0.1)")
    dashboard.add_argument("--port", type=port, default=8090, help="with --web: port to listen on (default: 8090)")
    dashboard.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)  # each --web session's app
    dashboard.set_defaults(handler=_cmd_dashboard)

    # demo
    demo = commands.add_parser(
        "demo", help="run the gateway with built-in fake providers and send demo traffic",
        description="Start the gateway and built-in fake providers on localhost and send a steady stream of "
                    "attributed demo traffic (no provider key needed); watch it with `tokensense dashboard`.",
    )
    demo.add_argument("--port", type=port, default=8080, help="the demo gateway's port (default: 8080)")
    demo.add_argument("--rate", metavar="N", type=positive_float, default=2.0, help="requests per second (default: 2)")
    demo.add_argument("--duration", metavar="SECONDS", type=seconds, default=0.0, help="stop after this long (default: 0 = run until Ctrl-C)")
    demo.set_defaults(handler=_cmd_demo)

    # reprice, replay (saved flow files, docs/intercept.md)
    reprice = commands.add_parser(
        "reprice", parents=[as_json], help="re-price the calls in a saved flow file with today's prices",
        formatter_class=FORMATTER,
        description="Read a flow file saved by `serve --record` (or mitmdump -w), read the usage of every provider "
        "answer in it again (streams included), price it with today's catalog and config.toml, and print totals "
        "by workflow and by model next to the cost recorded at the time. Works offline.",
        epilog="example:\n  tokensense reprice calls.flows --json",
    )
    reprice.add_argument("file", metavar="FILE", help="a mitmproxy flow file")
    reprice.set_defaults(handler=_cmd_reprice)

    replay = commands.add_parser(
        "replay", help="serve the provider answers saved in a flow file (no provider is called)",
        formatter_class=FORMATTER,
        description="Serve the answers saved in a flow file as a reverse proxy: point an SDK's base URL at "
        "http://HOST:PORT (any key). Requests are matched on method and path, and answered in recorded order; "
        "an unmatched request gets a 404. Built on mitmproxy's server replay.",
        epilog="example:\n  tokensense replay calls.flows --port 8082 --reuse",
    )
    replay.add_argument("file", metavar="FILE", help="a mitmproxy flow file")
    replay.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    replay.add_argument("--port", type=port, default=8082, help="port to listen on (default: 8082)")
    replay.add_argument("--reuse", action="store_true", help="serve a recorded answer again for every match "
                        "(default: each answer once, in order)")
    replay.set_defaults(handler=_cmd_replay)
