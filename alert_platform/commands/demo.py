"""``alert-platform demo events|hostile``: sample or hostile records for the running stack."""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, datetime

from alert_platform import topics
from alert_platform.commands.common import load_settings
from alert_platform.kafka.reachability import require_broker
from alert_platform.kafka.writer import BatchProducer


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
    settings = load_settings(args, local=True)
    require_broker(settings)  # fail fast, naming KAFKA_BOOTSTRAP_SERVERS, instead of timing out
    produced = produce_events(settings, events)
    print(f"Produced {produced} connector events to data-notifications-pipeline.")
    return 0


def _hostile(args: argparse.Namespace) -> int:
    import time

    from alert_platform.local.demo import slack_workspace
    from alert_platform.local.hostile import hostile_cases, hostile_lookups, normal_cases

    settings = load_settings(args, local=True)
    require_broker(settings)
    tag = args.tag or f"h{int(time.time())}"
    member = slack_workspace()["users"][0]
    lookups = hostile_lookups(tag, member["email"], member["id"])
    rows = [
        *((topics.CSDR_ASSIGNMENT, r["org_id"].encode(), r) for r in lookups["assignments"]),
        *((topics.SLACK_USERS, r["email"].encode(), r) for r in lookups["users"]),
    ]
    cases = [*hostile_cases(tag), *normal_cases(tag, args.normal)]
    out = BatchProducer.from_settings(settings)
    for topic, key, row in rows:
        out.produce(topic, key, json.dumps(row).encode())
    out.flush()  # the lookups first: the events join them
    for case in cases:
        out.produce(case.topic, case.key, case.value)
    out.flush()
    alerts = sum(1 for case in cases if case.outcome == "alert")
    print(
        f"Produced {len(cases)} records (tag {tag}): {len(cases) - args.normal} hostile, "
        f"{args.normal} ordinary; {alerts} should become alerts, the rest dead letters or "
        "stale alerts (see alert_platform/local/hostile.py)."
    )
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
    hostile = commands.add_parser(
        "hostile",
        help="produce hostile records (poison JSON, bad clocks, colliding ids, huge or bidi "
        "names, foreign slack-messages) beside ordinary events",
    )
    hostile.add_argument("--normal", type=int, default=5, help="ordinary events beside them")
    hostile.add_argument("--tag", help="id prefix of this round (default: h<unix time>)")
    hostile.set_defaults(handler=_hostile)
