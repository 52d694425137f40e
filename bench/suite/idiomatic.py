"""The connector-failure enrichment as a stream-processor user would write it: plain Python.

Used by the Quix Streams and Bytewax contenders (one copy, so both do exactly the same work).
Standard library and ``orjson`` only: it also runs in the separate Quix Streams environment,
which cannot import alert-platform, so it cannot use :mod:`alert_platform.wire` and writes the
contract by hand. The output is the same ``slack-messages`` wire format
(``alert_platform.wire.SlackMessage``: its fields in its order, ``dedup_key`` included) and the
same Block Kit JSON as alert-platform's renderer: the suite decodes every message with the
contract and compares it with the engine's (``bench.suite.common.check_content``). Written the
straightforward way: parse every event fully, dict lookups for the two joins, build the blocks
as dicts and let the framework's JSON serializer encode them.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

PIPELINE = "connector_failure"
PROVISIONING = "Provisioning"
FALLBACK_CHANNEL = "#alerts-unrouted"
CONSOLE_URL = "https://console.example/{org_id}/{env_id}/connectors/{connector_id}"
EMPTY = "—"

Tables = tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]


def load_tables(path: str) -> Tables:
    """(assignments by org id, Slack users by lower-cased e-mail) from the suite's JSON file."""
    with open(path, "rb") as handle:
        document = orjson.loads(handle.read())
    return document["csdr_assignments"], document["slack_users"]


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def shown(value: Any) -> str:
    return escape(value) if isinstance(value, str) and value else EMPTY


def decode(value: bytes | None) -> dict[str, Any] | None:
    """The event document, or None when the bytes are not a JSON object."""
    if value is None:
        return None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def labels_of(event: dict[str, Any] | None) -> dict[str, Any] | None:
    """``data.labels`` (``data`` may be a JSON string), or None."""
    if not isinstance(event, dict):
        return None
    data = event.get("data")
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(data, dict):
        return None
    labels = data.get("labels")
    return labels if isinstance(labels, dict) else None


def is_provisioning_failure(event: dict[str, Any] | None) -> bool:
    labels = labels_of(event)
    return labels is not None and labels.get("connector_old_status") == PROVISIONING


def extract(event: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of a provisioning failure, or None when incomplete."""
    labels = labels_of(event)
    if labels is None:
        return None
    fields = {name: labels.get(name) for name in ("org_id", "env_id", "connector_id")}
    if not all(isinstance(v, str) and v for v in fields.values()):
        return None
    for name in ("connector_name", "connector_new_status"):
        if not isinstance(labels.get(name), str):
            return None
        fields[name] = labels[name]
    try:
        moment = datetime.fromisoformat(event["time"])
    except (KeyError, TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    fields["event_time"] = moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
    fields["event_epoch"] = int(moment.timestamp())
    return fields


def join(fields: dict[str, Any], tables: Tables) -> dict[str, Any] | None:
    """Inner join of the org's assignment, left join of the assignee's Slack user."""
    assignments, users = tables
    assignment = assignments.get(fields["org_id"])
    if assignment is None:
        return None
    email = assignment.get("csdr_email")
    user = users.get(email.lower()) if isinstance(email, str) and email else None
    return {**fields, "assignment": assignment, "slack_user": user}


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def render(
    enriched: dict[str, Any], topic: str, partition: int, offset: int, timestamp_ms: int
) -> dict[str, Any]:
    """The ``slack-messages`` value: routing, Block Kit blocks and source position."""
    assignment, user = enriched["assignment"], enriched["slack_user"]
    org_id, env_id, connector_id = enriched["org_id"], enriched["env_id"], enriched["connector_id"]
    slack_id = user.get("slack_user_id") if user else None
    name = shown(assignment.get("csdr_name"))
    intended_for = None
    if isinstance(slack_id, str) and slack_id:
        channel = slack_id
        assignee = f"Assigned to <@{escape(channel)}> ({name})"
    else:
        channel = FALLBACK_CHANNEL
        email = assignment.get("csdr_email")
        person = assignment.get("csdr_name")
        intended_for = {
            "email": email if isinstance(email, str) and email else None,
            "name": person if isinstance(person, str) and person else None,
        }
        if email:
            assignee = (
                f":warning: Meant for *{name}* ({shown(email)}), but no Slack user is known "
                "for that email, so it was posted here."
            )
        else:
            assignee = (
                f":warning: Meant for *{name}*, but the assignment has no email, "
                "so it was posted here."
            )
    connector = shown(enriched["connector_name"])
    account = shown(assignment.get("account_name"))
    org, env, cid = escape(org_id), escape(env_id), escape(connector_id)
    event_time = enriched["event_time"]
    when = f"<!date^{enriched['event_epoch']}^{{date_short_pretty}} at {{time}}|{event_time}>"
    url = CONSOLE_URL.format(
        org_id=quote(org_id, safe=""),
        env_id=quote(env_id, safe=""),
        connector_id=quote(connector_id, safe=""),
    )
    blocks = [
        {"type": "header", "text": _plain(f"Connector failure: {connector}")},
        {
            "type": "section",
            "text": _mrkdwn(f"Connector *{connector}* failed while provisioning for *{account}*."),
            "fields": [
                _mrkdwn(f"*Organization*\n{account} (`{org}`)"),
                _mrkdwn(f"*Environment*\n`{env}`"),
                _mrkdwn(f"*Connector*\n{connector} (`{cid}`)"),
                _mrkdwn(f"*Status*\n{PROVISIONING} → {shown(enriched['connector_new_status'])}"),
                _mrkdwn(f"*Event time*\n{when}"),
            ],
        },
        {"type": "context", "elements": [_mrkdwn(assignee)]},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": _plain("Open in console"),
                    "url": url,
                    "action_id": "open_connector_console",
                }
            ],
        },
    ]
    # the engine's de-duplication key: BLAKE2b-128 of the alert id's template values
    digest = hashlib.blake2b(orjson.dumps([org_id, env_id, connector_id]), digest_size=16)
    message: dict[str, Any] = {
        "alert_id": f"{org_id}-{env_id}-{connector_id}-connector-failure",
        "dedup_key": f"{PIPELINE}:{digest.hexdigest()}",
        "pipeline": PIPELINE,
        "channel_id": channel,
        "text": f"Connector Failure for Org {org}!",
        "blocks": blocks,
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": timestamp_ms,
        },
        "created_at": datetime.now(UTC).replace(tzinfo=None).isoformat() + "Z",
        "event_time": event_time,
    }
    if intended_for is not None:
        message["intended_for"] = intended_for
    return message
