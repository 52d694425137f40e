"""``alert-platform dev``: what ``make dev`` runs."""

from __future__ import annotations

import argparse

from alert_platform.commands.common import add_data_dir_argument, load_settings


def _handle(args: argparse.Namespace) -> int:
    from alert_platform.local.dev import run_dev

    return run_dev(load_settings(args, local=True), demo_events=args.demo_events)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run the whole platform on the embedded local stack (Ctrl-C stops everything)",
        description=(
            "Start Kafka (Tansu), the BigQuery emulator and the Slack sandbox, create the "
            "topics, seed demo data, and run Dagster (webserver + daemon) until interrupted."
        ),
    )
    add_data_dir_argument(parser)
    parser.add_argument(
        "--demo-events",
        type=int,
        default=20,
        help="sample connector events to produce once Dagster is up (default 20)",
    )
    parser.set_defaults(handler=_handle)
