"""Pipeline ``onboarding``: an account started onboarding; tell the org's account-team member.

Source: ``onboarding-events``, written once a day by the BigQuery producer
(:mod:`alert_platform.bigquery.onboarding`, docs/onboarding.md). Key = Salesforce account id,
value::

    {"id": "onboarding-started:<salesforce_account_id>:<YYYY-MM-DD>",
     "type": "onboarding.started", "time": "<RFC 3339>",
     "data": {"salesforce_account_id", "org_id", "account_name", "plan", "started_at",
              "region", "csdr_email"}}

What is dead-lettered and what is merely dropped:

* A tombstone, bytes that are not UTF-8 or not JSON, or a value that is not a JSON object:
  dead letter (stage ``parse``).
* Any ``type`` other than ``onboarding.started``: filtered out, however incomplete the rest.
* An ``onboarding.started`` event must be complete (stage ``validate``): ``data`` an object;
  ``data.salesforce_account_id``, ``data.org_id``, ``data.account_name`` non-blank strings;
  ``data.plan``, ``data.region``, ``data.csdr_email`` strings or null; the record key equal to
  ``data.salesforce_account_id``; ``time`` an RFC 3339 timestamp with offset (``event_time`` is
  it in UTC, the de-duplication anchor); ``data.started_at`` RFC 3339 or absent / null (then
  ``time`` is shown); ``id`` equal to ``onboarding-started:<account id>:<UTC day of time>``.
* No assignment for ``data.org_id``: no alert (``unmatched``). Assignment but no Slack user
  for the assignee's email (lower-cased), or an empty Slack id: fallback channel with
  ``intended_for`` (``routed_to_fallback``), as in ``connector_failure``.

Alert id: ``<salesforce_account_id>-<YYYY-MM-DD>-onboarding-started``, the event id's two parts
(the check on ``id`` above makes it a function of the event id). Re-running or backfilling a
day produces the same event ids, hence the same alert ids and event times, and the delivery
ledger suppresses the repeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any

from slack_sdk.models.blocks import Block, ContextBlock, HeaderBlock, PlainTextObject, SectionBlock

from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.spec import (
    ASSIGNEE_ROUTE,
    BadRecord,
    Context,
    PipelineSpec,
    Renderer,
    RenderOptions,
    SlackMessage,
    assignee_joins,
    assignee_line,
    decode_json_object,
    decode_key,
    kind_of,
    rfc3339_utc,
)
from alert_platform.slack.blocks import VALUE_MAX, BlockTemplate, date_token, display, mrkdwn
from alert_platform.slack.mrkdwn import escape_truncate
from alert_platform.topics import ONBOARDING_EVENTS

NAME = "onboarding"
EVENT_TYPE = "onboarding.started"  # = alert_platform.bigquery.onboarding.EVENT_TYPE
EVENT_ID_PREFIX = "onboarding-started"  # event id: "onboarding-started:<account id>:<day>"
ALERT_ID = "{salesforce_account_id}-{day}-onboarding-started"

REQUIRED = ("salesforce_account_id", "org_id", "account_name")
OPTIONAL = ("plan", "region", "csdr_email")

_TEXT_PREFIX = "Onboarding started for "
_TEXT_MAX = VALUE_MAX  # the account name in the notification text


def event_id(salesforce_account_id: str, day: str) -> str:
    """The producer's deterministic event id for an account and a ``YYYY-MM-DD`` day."""
    return f"{EVENT_ID_PREFIX}:{salesforce_account_id}:{day}"


def parse(record: SourceRecord) -> dict[str, Any]:
    """The value as a JSON object, or a :class:`BadRecord`."""
    return decode_json_object(record.value)


def keep(document: Mapping[str, Any]) -> bool:
    """Only ``onboarding.started`` events."""
    return document.get("type") == EVENT_TYPE


def explain_filter(record: SourceRecord, document: Any) -> str:
    """Why :func:`keep` dropped an event (for ``alert-platform explain``)."""
    kind = document.get("type") if isinstance(document, Mapping) else None
    return f"type is {kind!r}, not 'onboarding.started'"


def _required(data: Mapping[str, Any], name: str) -> str:
    if name not in data:
        raise BadRecord(f"data.{name} missing")
    value = data[name]
    if type(value) is not str:
        raise BadRecord(f"data.{name} is {kind_of(value)}, expected a string")
    value = value.strip()
    if not value:
        raise BadRecord(f"data.{name} is empty")
    return value


def _optional(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if type(value) is not str:
        raise BadRecord(f"data.{name} is {kind_of(value)}, expected a string or null")
    return value.strip() or None


def validate(record: SourceRecord, document: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an onboarding-started event, or a :class:`BadRecord` naming what is wrong."""
    if "data" not in document:
        raise BadRecord("data missing")
    data = document["data"]
    if type(data) is not dict:
        raise BadRecord(f"data is {kind_of(data)}, expected an object")
    account_id, org_id, account_name = (_required(data, name) for name in REQUIRED)
    plan, region, csdr_email = (_optional(data, name) for name in OPTIONAL)
    key = decode_key(record)
    if key != account_id:
        raise BadRecord(
            f"record key {key[:100]!r} does not match data.salesforce_account_id"
            f" {account_id[:100]!r}"
        )
    event_time, event_epoch = rfc3339_utc(document.get("time"))
    day = event_time[:10]  # canonical UTC form: YYYY-MM-DDT...Z
    if data.get("started_at") is None:
        started_at, started_epoch = event_time, event_epoch
    else:
        started_at, started_epoch = rfc3339_utc(data["started_at"], "data.started_at")
    expected_id = event_id(account_id, day)
    given_id = document.get("id")
    if type(given_id) is not str:
        if given_id is None:
            raise BadRecord("id missing or null")
        raise BadRecord(f"id is {kind_of(given_id)}, expected a string")
    if given_id != expected_id:
        raise BadRecord(f"id {given_id[:200]!r} does not match {expected_id[:200]!r}")
    return {
        "event_id": expected_id,
        "salesforce_account_id": account_id,
        "org_id": org_id,
        "account_name": account_name,
        "plan": plan,
        "region": region,
        "csdr_email": csdr_email,
        "day": day,
        "started_at": started_at,
        "started_epoch": started_epoch,
        "event_time": event_time,
        "event_epoch": event_epoch,
    }


# -- rendering ------------------------------------------------------------------------------

_NAMES = (
    "account_name",
    "salesforce_account_id",
    "plan",
    "started_at",
    "region",
    "org_id",
    "assignee",
)
# Built by our code (date token, mention) and escaped piecewise there.
_TRUSTED = ("started_at", "assignee")

NEXT_STEPS = (
    "Welcome *{account_name}* and book the kickoff call within two business days",
    "Confirm the technical contacts, goals and success criteria",
    "Walk through the onboarding checklist and agree on a go-live date",
    "Log the kickoff on the Salesforce account (`{salesforce_account_id}`)",
)


def layout(v: Mapping[str, str]) -> list[Block]:
    """The message, in slack_sdk models, from already-escaped values."""
    steps = "\n".join(
        "• "
        + step.format(
            account_name=v["account_name"], salesforce_account_id=v["salesforce_account_id"]
        )
        for step in NEXT_STEPS
    )
    return [
        HeaderBlock(
            text=PlainTextObject(text=f"Onboarding started: {v['account_name']}", emoji=True)
        ),
        SectionBlock(
            text=mrkdwn(f"*{v['account_name']}* started onboarding."),
            fields=[
                mrkdwn(f"*Account*\n{v['account_name']} (`{v['salesforce_account_id']}`)"),
                mrkdwn(f"*Plan*\n{v['plan']}"),
                mrkdwn(f"*Start date*\n{v['started_at']}"),
                mrkdwn(f"*Region*\n{v['region']}"),
                mrkdwn(f"*Org*\n`{v['org_id']}`"),
            ],
        ),
        SectionBlock(text=mrkdwn(f"*Suggested next steps*\n{steps}")),
        ContextBlock(elements=[mrkdwn(v["assignee"])]),
    ]


@lru_cache(maxsize=1)
def _template() -> BlockTemplate:
    return BlockTemplate(layout, _NAMES, trusted=_TRUSTED, value_max=VALUE_MAX)


def make_renderer(options: RenderOptions) -> Renderer:
    """The renderer (one template for every option: the fallback channel only routes)."""
    fill = _template().fill_seq

    def render(context: Context) -> SlackMessage:
        fields = context.fields
        account_name = fields["account_name"]
        values = [  # in _NAMES order
            account_name,
            fields["salesforce_account_id"],
            display(fields["plan"]),
            date_token(fields["started_epoch"], fields["started_at"]),
            display(fields["region"]),
            fields["org_id"],
            assignee_line(context),
        ]
        text = _TEXT_PREFIX + escape_truncate(account_name, _TEXT_MAX)
        return SlackMessage(text, fill(values))

    return render


ONBOARDING = PipelineSpec(
    name=NAME,
    source_topic=ONBOARDING_EVENTS,
    description="An account started onboarding: tell the org's account-team member.",
    parse=parse,
    keep=keep,
    validate=validate,
    joins=assignee_joins("org_id"),
    route=ASSIGNEE_ROUTE,
    alert_id=ALERT_ID,
    make_renderer=make_renderer,
    explain_filter=explain_filter,
    # The daily producer runs at 06:00 UTC for the previous day: its events are up to 30 h old
    # when they are delivered, and a rerun the next day must still post what was missed.
    max_alert_age=timedelta(hours=72),
)
