"""``python -m alert_platform.local.sandbox --host H --port P [--seed FILE.json]``.

The bot token comes from ``$SLACK_BOT_TOKEN`` (default ``xoxb-local-sandbox``); ``--token``
overrides it but shows the token to ``ps``: prefer the variable.
"""

from __future__ import annotations

import argparse
import os
import sys

from alert_platform.local.sandbox.server import SANDBOX_TOKEN_ENV, serve
from alert_platform.local.sandbox.state import DEFAULT_BURST, DEFAULT_PER_SECOND
from alert_platform.settings import LOCAL_SLACK_TOKEN


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM (exit 0); 2 on a bad seed, 1 when it cannot listen."""
    parser = argparse.ArgumentParser(
        prog="python -m alert_platform.local.sandbox",
        description="Local Slack Web API sandbox (chat.postMessage, conversations.*, users.*).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8025, help="port to bind (0: any free)")
    parser.add_argument(
        "--token",
        default=os.environ.get(SANDBOX_TOKEN_ENV) or LOCAL_SLACK_TOKEN,
        help=f"the one valid bot token (default ${SANDBOX_TOKEN_ENV}, else {LOCAL_SLACK_TOKEN}; "
        "the variable keeps it off the command line)",
    )
    parser.add_argument("--seed", help="JSON file with users and channels to add")
    parser.add_argument(
        "--rate-per-second",
        type=float,
        default=DEFAULT_PER_SECOND,
        help="chat.postMessage messages per second per channel (0 disables the limit)",
    )
    parser.add_argument("--rate-burst", type=int, default=DEFAULT_BURST, help="bucket size")
    parser.add_argument("--log-requests", action="store_true", help="log each request")
    args = parser.parse_args(argv)
    try:
        serve(
            args.host,
            args.port,
            args.token,
            args.seed,
            per_second=args.rate_per_second or None,
            burst=max(1, args.rate_burst),
            log_requests=args.log_requests,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
