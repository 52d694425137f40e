"""``alert-platform demo events``: produce sample connector events to the running stack."""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime

from alert_platform.cli import _require_broker, load_settings


def _events(args: argparse.Namespace) -> int:
    from alert_platform.local.demo import (
        DEMO_ORG_COUNT,
        connector_event,
        demo_org_id,
        produce_events,
    )

    rng = random.Random(args.seed)
    now = datetime.now(UTC)
    events = []
    for number in range(args.count):
        org_id = args.org or demo_org_id(rng.randint(1, DEMO_ORG_COUNT))
        event = connector_event(org_id, number, now, rng)
        if args.provisioning:
            event["data"] = event["data"].replace('"Running"', '"Provisioning"')
        events.append((org_id, event))
    settings = load_settings(args)
    _require_broker(settings)  # fail fast, naming KAFKA_BOOTSTRAP_SERVERS, instead of timing out
    produced = produce_events(settings, events)
    print(f"Produced {produced} connector events to data-notifications-pipeline.")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", help="sample data for the local stack")
    commands = parser.add_subparsers(dest="demo_command", required=True)
    events = commands.add_parser(
        "events", help="produce sample connector-status events (Kafka from the environment)"
    )
    events.add_argument("--count", type=int, default=5, help="how many events (default 5)")
    events.add_argument("--org", help="org id for every event (default: random demo orgs)")
    events.add_argument(
        "--provisioning",
        action="store_true",
        help="make every event a provisioning failure (each one becomes an alert)",
    )
    events.add_argument("--seed", type=int, default=None, help="random seed")
    events.set_defaults(handler=_events)
