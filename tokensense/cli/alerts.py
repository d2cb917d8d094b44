"""`tokensense alerts test`: send a sample budget alert to the webhook in config.toml's `[alerts]`."""

from __future__ import annotations

import argparse
import json

from tokensense.config import AlertsConfig, load_config
from tokensense.settings import get_settings


def _cmd_alerts_test(args: argparse.Namespace) -> int:
    from tokensense.observability.alerts import alert_payload, post_alert, sample_alert

    config = load_config(get_settings()).alerts
    if args.url:
        config = AlertsConfig(webhook_url=args.url, thresholds=config.thresholds, format=args.format or config.format)
    elif args.format:
        config = config.model_copy(update={"format": args.format})
    if not config.webhook_url:
        raise ValueError("no webhook: set `webhook_url` under [alerts] in config.toml (TOKENSENSE_HOME), or pass --url")
    payload = alert_payload(sample_alert(args.threshold), config.format)
    print(f"POST {config.webhook_url} ({config.format}):\n{json.dumps(payload, indent=2)}")
    if not post_alert(config.webhook_url, payload, attempts=args.attempts, backoff=1.0):
        print("error: the webhook did not accept the alert (see the messages above)")
        return 1
    print("delivered")
    return 0


def add_alerts_parser(commands: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    alerts = commands.add_parser(
        "alerts", help="budget alerts to a webhook ([alerts] in config.toml)", formatter_class=formatter,
        description="The gateway POSTs to [alerts] webhook_url when a key's spend crosses each of the thresholds "
        "(fractions of its budget), once per threshold and budget period.",
    )
    alerts.set_defaults(handler=lambda args: (alerts.print_help(), 2)[1])
    sub = alerts.add_subparsers(title="commands", metavar="COMMAND")
    test = sub.add_parser("test", help="send a sample alert now", formatter_class=formatter,
                          description="Send a sample alert (key `example-key`, marked \"test\": true) to the webhook, "
                          "with the same retries as the gateway.")
    test.add_argument("--url", help="send here instead of [alerts] webhook_url")
    test.add_argument("--format", choices=("json", "slack"), help="payload format (default: [alerts] format)")
    test.add_argument("--threshold", type=float, default=0.8, help="threshold of the sample (default: 0.8)")
    test.add_argument("--attempts", type=int, default=3, help="attempts before giving up (default: 3)")
    test.set_defaults(handler=_cmd_alerts_test)
