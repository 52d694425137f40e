"""Deterministic demo data: account-team assignments, Slack users and sample events.

The Slack users are the ones the sandbox workspace is seeded with
(``seed/slack_workspace.json``); one account-team member deliberately has no Slack account, so
the demo also shows the fallback channel.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from alert_platform import topics
from alert_platform.kafka.writer import BatchProducer
from alert_platform.settings import Settings

UNMAPPED_MEMBER = ("margaret.hamilton@example.com", "Margaret Hamilton")
DEMO_ORG_COUNT = 12


@dataclass(frozen=True)
class DemoData:
    """Everything the demo produces to Kafka."""

    assignments: dict[str, dict[str, str]]
    slack_users: dict[str, dict[str, str]]
    events: list[tuple[str, dict[str, Any]]]


def slack_workspace() -> dict[str, list[dict[str, str]]]:
    """The sandbox's seed workspace (users and channels)."""
    text = resources.files("alert_platform.local").joinpath("seed/slack_workspace.json").read_text()
    return json.loads(text)


def demo_org_id(index: int) -> str:
    return f"org-{index:04d}"


def build_demo_data(event_count: int = 20, *, seed: int = 7) -> DemoData:
    """Assignments for ``DEMO_ORG_COUNT`` orgs (one unassigned), users, and sample events."""
    users = slack_workspace()["users"]
    members = [(u["email"], u["name"]) for u in users] + [UNMAPPED_MEMBER]
    assignments: dict[str, dict[str, str]] = {}
    for index in range(1, DEMO_ORG_COUNT):  # the last org stays unassigned
        email, name = members[index % len(members)]
        org_id = demo_org_id(index)
        assignments[org_id] = {
            "org_id": org_id,
            "csdr_email": email,
            "csdr_name": name,
            "account_name": f"Demo Account {index}",
        }
    slack_users = {
        u["email"]: {"email": u["email"], "slack_user_id": u["id"], "name": u["name"]}
        for u in users
    }
    rng = random.Random(seed)
    now = datetime.now(UTC)
    events = []
    for number in range(event_count):
        org_id = demo_org_id(rng.randint(1, DEMO_ORG_COUNT))
        events.append((org_id, connector_event(org_id, number, now, rng)))
    return DemoData(assignments, slack_users, events)


def connector_event(
    org_id: str, number: int, when: datetime, rng: random.Random | None = None
) -> dict[str, Any]:
    """A notification event as the upstream producer writes it (``data`` as a JSON string)."""
    rng = rng or random.Random(number)
    old_status = "Provisioning" if rng.random() < 0.7 else "Running"
    labels = {
        "connector_old_status": old_status,
        "connector_new_status": "Failed",
        "org_id": org_id,
        "env_id": f"env-{rng.randint(1, 3)}",
        "connector_id": f"lcc-{rng.randint(1000, 9999)}",
        "connector_name": rng.choice(["orders-sink", "billing-cdc", "s3-archive", "crm-source"]),
    }
    return {
        "id": f"evt-{org_id}-{number}-{int(when.timestamp())}",
        "type": "io.confluent.connect.connector.status",
        "time": (when - timedelta(seconds=number)).isoformat().replace("+00:00", "Z"),
        "data": json.dumps({"labels": labels}),
    }


def _encode(value: dict[str, Any] | None) -> bytes | None:
    return None if value is None else json.dumps(value).encode()


def produce_lookup_tables(settings: Settings, data: DemoData) -> int:
    """Write the demo assignments and Slack users to their compacted topics."""
    producer = BatchProducer.from_settings(settings)
    producer.produce_many(
        topics.CSDR_ASSIGNMENT, ((k.encode(), _encode(row)) for k, row in data.assignments.items())
    )
    producer.produce_many(
        topics.SLACK_USERS, ((k.encode(), _encode(row)) for k, row in data.slack_users.items())
    )
    producer.flush(30)  # ProduceError names what was not delivered
    return len(data.assignments) + len(data.slack_users)


def produce_events(settings: Settings, events: list[tuple[str, dict[str, Any]]]) -> int:
    """Write notification events to ``data-notifications-pipeline``."""
    producer = BatchProducer.from_settings(settings)
    producer.produce_many(
        topics.NOTIFICATIONS, ((org.encode(), _encode(event)) for org, event in events)
    )
    producer.flush(30)
    return len(events)
