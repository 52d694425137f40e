"""Hostile records for the local stack: what a careless or hostile producer writes beside
ordinary traffic (``alert-platform demo hostile``, and the fault suite's mixed-traffic scenario).

Each :class:`HostileCase` names the topic it goes to, the record, and what the platform must do
with it: ``alert`` (posted once, to ``channel`` when one is given), ``dlq`` (dead-lettered with a
reason, nothing posted), ``stale`` (enriched, never posted by live delivery) or ``none`` (not an
alert at all). Ordinary events produced beside them must keep flowing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from alert_platform import topics
from alert_platform.wire import format_rfc3339

Outcome = Literal["alert", "dlq", "stale", "none"]

# A name far beyond anything Slack shows (the issue measured a 900 KB alert from one).
HUGE_NAME_CHARS = 900_000
# Deep enough to break a recursive JSON decoder (CPython's json: ~1,000 levels).
DEEP_NESTING = 100_000
BIDI_AND_CONTROLS = "\u202eevil\u202c\x00\x07"


@dataclass(frozen=True)
class HostileCase:
    """One hostile record and the outcome the platform owes it."""

    name: str
    topic: str
    key: bytes | None
    value: bytes | None
    outcome: Outcome
    alert_id: str | None = None


def _rfc3339(moment: datetime) -> str:
    return format_rfc3339(moment.replace(microsecond=0))


def _event(org: str, env: str, connector: str, time: str, *, name: str = "orders-sink") -> bytes:
    labels = {
        "connector_old_status": "Provisioning",
        "connector_new_status": "Failed",
        "org_id": org,
        "env_id": env,
        "connector_id": connector,
        "connector_name": name,
    }
    event = {
        "id": f"evt-{org}-{env}-{connector}-{time}",
        "type": "io.confluent.connect.connector.status",
        "time": time,
        "data": json.dumps({"labels": labels}),
    }
    return json.dumps(event).encode()


def _deep(core: bytes) -> bytes:
    return b"[" * DEEP_NESTING + core + b"]" * DEEP_NESTING


def _alert_id(org: str, env: str, connector: str) -> str:
    return f"{org}-{env}-{connector}-connector-failure"


def hostile_lookups(tag: str, member_email: str, member_user_id: str) -> dict[str, list[Any]]:
    """Lookup rows the hostile events join: orgs whose ids collide when joined with ``-``, an
    assignee whose Slack user id is a channel name, and one whose name is 900 KB long."""
    orgs = {
        f"{tag}-acme-prod": (member_email, "Ada"),
        f"{tag}-acme": (member_email, "Ada"),
        f"{tag}-dm-general": (f"general-{tag}@example.com", "General"),
        f"{tag}-huge": (member_email, "H" * HUGE_NAME_CHARS),
        f"{tag}-bidi": (member_email, f"Mallory {BIDI_AND_CONTROLS}"),
        f"{tag}-clock": (member_email, "Ada"),
    }
    assignments = [
        {"org_id": org, "csdr_email": email, "csdr_name": name, "account_name": f"{org} account"}
        for org, (email, name) in orgs.items()
    ]
    users = [
        {"email": member_email, "slack_user_id": member_user_id, "name": "Ada"},
        {"email": f"general-{tag}@example.com", "slack_user_id": "general", "name": "General"},
    ]
    return {"assignments": assignments, "users": users}


def hostile_cases(tag: str, now: datetime | None = None) -> list[HostileCase]:
    """The hostile records of one round, their ids made unique by ``tag``."""
    now = now or datetime.now(UTC)
    fresh = _rfc3339(now)
    src = topics.NOTIFICATIONS
    cases: list[HostileCase] = []

    def add(name: str, topic: str, key: bytes | None, value: bytes | None, outcome: Outcome,
            alert_id: str | None = None) -> None:  # fmt: skip
        cases.append(HostileCase(f"{tag}:{name}", topic, key, value, outcome, alert_id))

    # -- source events ---------------------------------------------------------------------
    clock = f"{tag}-clock"
    for label, moment in (
        ("year-1", "0001-01-01T00:00:00Z"),
        ("year-9999", "9999-12-31T23:00:00Z"),
    ):
        add(
            f"event time {label}", src, clock.encode(), _event(clock, "env-1", label, moment), "dlq"
        )
    month_old = _rfc3339(now - timedelta(days=31))
    add("event time 31 days back", src, clock.encode(), _event(clock, "env-1", "old31", month_old),
        "dlq")  # fmt: skip
    far_ahead = _rfc3339(now + timedelta(hours=2))
    add("event time 2 h ahead", src, clock.encode(), _event(clock, "env-1", "ahead", far_ahead),
        "dlq")  # fmt: skip
    two_days = _rfc3339(now - timedelta(days=2))
    add("event 2 days old", src, clock.encode(), _event(clock, "env-1", "stale", two_days),
        "stale", _alert_id(clock, "env-1", "stale"))  # fmt: skip
    # Same readable alert id, two different alerts: both must be posted.
    for org, env in ((f"{tag}-acme-prod", "env-1"), (f"{tag}-acme", "prod-env-1")):
        add(f"id collision {org}/{env}", src, org.encode(), _event(org, env, "lcc-1", fresh),
            "alert", _alert_id(org, env, "lcc-1"))  # fmt: skip
    general = f"{tag}-dm-general"
    add("slack_user_id 'general'", src, general.encode(), _event(general, "env-1", "lcc-1", fresh),
        "alert", _alert_id(general, "env-1", "lcc-1"))  # fmt: skip
    huge = f"{tag}-huge"
    add("900 KB assignee name", src, huge.encode(), _event(huge, "env-1", "lcc-1", fresh),
        "alert", _alert_id(huge, "env-1", "lcc-1"))  # fmt: skip
    bidi = f"{tag}-bidi"
    add("NUL and bidi controls", src, bidi.encode(),
        _event(bidi, "env-1", "lcc-1", fresh, name=f"sink {BIDI_AND_CONTROLS}"),
        "alert", _alert_id(bidi, "env-1", "lcc-1"))  # fmt: skip
    poison = f"{tag}-poison".encode()
    add("deeply nested JSON event", src, poison, _deep(json.dumps(tag).encode()), "dlq")
    add("not JSON", src, poison, b"\xff\xfe not json " + poison, "dlq")

    # -- slack-messages written by someone else --------------------------------------------
    out = topics.SLACK_MESSAGES
    deep = b'{"alert_id":' + _deep(json.dumps(tag).encode()) + b"}"
    add("deeply nested slack-message", out, f"{tag}-deep".encode(), deep, "dlq")
    for label, moment in (
        ("year-1", "0001-01-01T00:00:00Z"),
        ("year-9999", "9999-12-31T23:00:00Z"),
    ):
        message = {
            "alert_id": f"{tag}-clock-{label}",
            "pipeline": "hostile",
            "channel_id": "#alerts-unrouted",
            "text": f"hostile alert, event time {moment}",
            "blocks": None,
            "event_time": moment,
        }
        add(f"slack-message event time {label}", out, message["alert_id"].encode(),
            json.dumps(message).encode(), "stale" if label == "year-1" else "dlq")  # fmt: skip
    add("slack-message tombstone", out, f"{tag}-tombstone".encode(), None, "dlq")
    return cases


def normal_cases(
    tag: str, count: int, now: datetime | None = None, *, first: int = 0
) -> list[HostileCase]:
    """Ordinary provisioning failures of the org ``{tag}-acme``, each one an alert (numbered
    from ``first``)."""
    now = now or datetime.now(UTC)
    org = f"{tag}-acme"
    return [
        HostileCase(
            f"{tag}:normal-{number}",
            topics.NOTIFICATIONS,
            org.encode(),
            _event(org, "env-1", f"lcc-normal-{number}", _rfc3339(now)),
            "alert",
            _alert_id(org, "env-1", f"lcc-normal-{number}"),
        )
        for number in range(first, first + count)
    ]
