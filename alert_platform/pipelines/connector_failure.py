"""Pipeline ``connector_failure``: a connector that failed while provisioning.

Source: ``data-notifications-pipeline``, key = org id, value = a JSON event whose ``data`` is
an object or a string holding a JSON object, with ``data.labels`` describing the connector.

What is dead-lettered and what is merely dropped:

* Every value is parsed: a tombstone, bytes that are not UTF-8 or not JSON, or a value that is
  not a JSON object is always a dead letter (stage ``parse``).
* ``data`` missing or not an object / JSON-object string, ``data.labels`` missing or not an
  object: dead letter (stage ``parse``) when the event *could* be a provisioning failure, i.e.
  its text contains ``Provisioning`` (or a ``\\u`` escape, which could spell it). An event that
  cannot be one is filtered out without a closer look; this is also why ``data`` strings of
  such events are never parsed (the cheap filter that keeps the engine fast).
* Events whose ``labels.connector_old_status`` is not ``"Provisioning"`` are filtered out,
  however incomplete their other labels: we would drop them anyway.
* A provisioning failure must be complete (stage ``validate``): a key (UTF-8) equal to
  ``labels.org_id``; the labels ``org_id``, ``env_id``, ``connector_id``, ``connector_name``,
  ``connector_new_status`` present and strings (the three ids non-empty); ``time`` an RFC 3339
  timestamp with offset. ``event_time`` is that time normalised to UTC: the de-duplication
  anchor must come from the event itself, so there is no fallback to the Kafka timestamp.
* No assignment for the org: no alert (``unmatched``). Assignment but no Slack user for the
  assignee's email (compared lower-cased), or an empty Slack id: the alert goes to the fallback
  channel, says who it was meant for and carries ``intended_for`` (``routed_to_fallback``).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping
from functools import lru_cache
from operator import itemgetter
from typing import Any
from urllib.parse import quote

import orjson
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    PlainTextObject,
    SectionBlock,
)

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
    decode_key,
    kind_of,
    rfc3339_utc,
)
from alert_platform.pipelines.spec import ASSIGNMENTS as ASSIGNMENTS  # re-export
from alert_platform.pipelines.spec import SLACK_USERS as SLACK_USERS  # re-export
from alert_platform.slack.blocks import (
    EMPTY,
    URL_MAX,
    VALUE_MAX,
    BlockTemplate,
    date_token,
    display,
    mrkdwn,
)
from alert_platform.slack.mrkdwn import escape_truncate
from alert_platform.topics import NOTIFICATIONS

NAME = "connector_failure"
PROVISIONING = "Provisioning"
ALERT_ID = "{org_id}-{env_id}-{connector_id}-connector-failure"

ID_LABELS = ("org_id", "env_id", "connector_id")
TEXT_LABELS = ("connector_name", "connector_new_status")
# Console URL placeholders (values URL-encoded).
URL_FIELDS = ("org_id", "env_id", "connector_id", "connector_name")
_ORG_TEXT_MAX = VALUE_MAX  # the org id in the notification text

# (event document, data.labels, whether labels.connector_old_status is "Provisioning")
Parsed = tuple[dict[str, Any], dict[str, Any], bool]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def parse(record: SourceRecord) -> Parsed:
    """Decode the value down to ``data.labels``, or raise a :class:`BadRecord`.

    The value must be a JSON object. Past that, problems are reported only for events that
    could be provisioning failures: an event whose text cannot spell ``Provisioning`` is
    returned as "not ours" (empty labels, flagged not a provisioning failure, so the filter
    drops it) without a closer look, which also spares parsing ``data`` strings of the events
    we drop.
    """
    value = record.value
    if value is None:
        raise BadRecord("value is null (tombstone)")
    try:
        document = _loads(value)
    except _JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf8:
            raise BadRecord(f"value is not valid UTF-8: {utf8}") from None
        raise BadRecord(f"value is not valid JSON: {exc}") from None
    if type(document) is not dict:
        raise BadRecord(f"value is {kind_of(document)}, expected a JSON object")
    data = document.get("data")
    if type(data) is str:
        # PROVISIONING not in data and "\\u" not in data, with a one-character search
        # (memchr) first: most data strings hold neither a "P" nor a backslash
        if ("P" not in data or PROVISIONING not in data) and (
            "\\" not in data or "\\u" not in data
        ):
            return _NOT_OURS
        try:
            data = _loads(data)
        except _JSONDecodeError as exc:
            raise BadRecord(f"data is a string but not valid JSON: {exc}") from None
        if type(data) is not dict:
            raise BadRecord(f"data is a JSON string holding {kind_of(data)}, expected an object")
    if type(data) is dict:
        labels = data.get("labels")
        if type(labels) is dict:
            return document, labels, labels.get("connector_old_status") == PROVISIONING
    if not could_be_provisioning(value):
        return _NOT_OURS
    if type(data) is not dict:
        if "data" not in document:
            raise BadRecord("data missing")
        raise BadRecord(f"data is {kind_of(data)}, expected an object or a JSON string")
    if "labels" not in data:
        raise BadRecord("data.labels missing")
    raise BadRecord(f"data.labels is {kind_of(data['labels'])}, expected an object")


_NOT_OURS: Parsed = ({}, {}, False)


def could_be_provisioning(value: bytes) -> bool:
    """Whether a JSON text could hold the string ``Provisioning`` anywhere: it appears
    literally, or a ``\\u`` escape could spell it."""
    return b"Provisioning" in value or b"\\u" in value


# The filter: only connectors that failed while provisioning (parse compared the old status;
# a C-level getter, so the filter costs no Python call per event).
keep: Callable[[Parsed], bool] = itemgetter(2)


def explain_filter(record: SourceRecord, parsed: Parsed) -> str:
    """Why :data:`keep` dropped an event (for ``alert-platform explain``)."""
    document, labels, _ = parsed
    if not document:  # parse's shortcut: the text cannot spell 'Provisioning'; look closer
        labels = _connector_labels(record.value)
        if labels is None:
            return "the event has no data.labels and never mentions 'Provisioning'"
    if "connector_old_status" not in labels:
        return "labels.connector_old_status is missing; only 'Provisioning' failures alert"
    return (
        f"labels.connector_old_status is {labels['connector_old_status']!r}, "
        "not 'Provisioning' (only connectors that failed while provisioning alert)"
    )


def _connector_labels(value: bytes | None) -> dict[str, Any] | None:
    """``data.labels`` of a value, looking into a ``data`` string (``None``: none found)."""
    try:
        data = json.loads(value or b"null").get("data")
        if isinstance(data, str):
            data = json.loads(data)
        labels = data.get("labels")
    except (ValueError, AttributeError):
        return None
    return labels if isinstance(labels, dict) else None


def validate(record: SourceRecord, parsed: Parsed) -> dict[str, Any]:
    """The fields of a provisioning failure, or a :class:`BadRecord` naming what is wrong."""
    document, labels, _ = parsed
    key = record.key
    if key is None:
        raise BadRecord("record has no key")
    try:
        org_id, env_id, connector_id, connector_name, new_status = _required_labels(labels)
    except KeyError:
        raise BadRecord(_labels_problem(labels)) from None
    if not (
        type(org_id) is str
        and type(env_id) is str
        and type(connector_id) is str
        and type(connector_name) is str
        and type(new_status) is str
        and org_id
        and env_id
        and connector_id
    ):
        raise BadRecord(_labels_problem(labels))
    if key != org_id.encode():
        text = decode_key(record)  # a non-UTF-8 key says so
        raise BadRecord(f"record key {text[:100]!r} does not match labels.org_id {org_id[:100]!r}")
    event_time, event_epoch = rfc3339_utc(document.get("time"))
    return {
        "org_id": org_id,
        "env_id": env_id,
        "connector_id": connector_id,
        "connector_name": connector_name,
        "connector_old_status": PROVISIONING,
        "connector_new_status": new_status,
        "event_time": event_time,
        "event_epoch": event_epoch,
    }


_required_labels = itemgetter(*ID_LABELS, *TEXT_LABELS)


def _labels_problem(labels: Mapping[str, Any]) -> str:
    for name in (*ID_LABELS, *TEXT_LABELS):
        problem = _label_problem(labels, name, required=name in ID_LABELS)
        if problem:
            return problem
    raise AssertionError("labels are complete")  # pragma: no cover


def _label_problem(labels: Mapping[str, Any], name: str, *, required: bool) -> str:
    if name not in labels:
        return f"labels.{name} missing"
    value = labels[name]
    if type(value) is not str:
        return f"labels.{name} is {kind_of(value)}, expected a string"
    if required and not value:
        return f"labels.{name} is empty"
    return ""


# -- rendering ------------------------------------------------------------------------------

_NAMES = (
    "connector_name",
    "connector_id",
    "org_id",
    "env_id",
    "account_name",
    "old_status",
    "new_status",
    "event_time",
    "assignee",
)
# Built by our code (mentions, date tokens, URLs) and escaped piecewise there.
_TRUSTED = ("event_time", "assignee")


def layout(v: Mapping[str, str], *, console_button: bool = False) -> list[Block]:
    """The message, in slack_sdk models, from already-escaped values."""
    blocks: list[Block] = [
        HeaderBlock(
            text=PlainTextObject(text=f"Connector failure: {v['connector_name']}", emoji=True)
        ),
        SectionBlock(
            text=mrkdwn(
                f"Connector *{v['connector_name']}* failed while provisioning"
                f" for *{v['account_name']}*."
            ),
            fields=[
                mrkdwn(f"*Organization*\n{v['account_name']} (`{v['org_id']}`)"),
                mrkdwn(f"*Environment*\n`{v['env_id']}`"),
                mrkdwn(f"*Connector*\n{v['connector_name']} (`{v['connector_id']}`)"),
                mrkdwn(f"*Status*\n{v['old_status']} → {v['new_status']}"),
                mrkdwn(f"*Event time*\n{v['event_time']}"),
            ],
        ),
        ContextBlock(elements=[mrkdwn(v["assignee"])]),
    ]
    if console_button:
        blocks.append(
            ActionsBlock(
                elements=[
                    ButtonElement(
                        text=PlainTextObject(text="Open in console", emoji=True),
                        url=v["console_url"],
                        action_id="open_connector_console",
                    )
                ]
            )
        )
    return blocks


@lru_cache(maxsize=2)
def _templates() -> tuple[BlockTemplate, BlockTemplate]:
    plain = BlockTemplate(layout, _NAMES, trusted=_TRUSTED, value_max=VALUE_MAX)
    with_button = BlockTemplate(
        lambda v: layout(v, console_button=True),
        (*_NAMES, "console_url"),
        trusted=(*_TRUSTED, "console_url"),
        value_max=VALUE_MAX,
    )
    return plain, with_button


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*")


def _url_quote(value: str) -> str:
    return value if _URL_SAFE.fullmatch(value) else quote(value, safe="")


def _url_builder(template: str) -> Callable[[Mapping[str, Any]], str]:
    """``template`` with the URL-encoded fields it names (checked here, once per batch)."""
    pieces: list[str] = []
    used: list[str] = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        pieces.append(literal.replace("%", "%%"))
        if name is None:
            continue
        if name not in URL_FIELDS or spec or conversion:
            raise ValueError(
                f"console URL template {template!r}: {{{name}}} is not allowed; "
                f"use plain {{name}} with a name from {list(URL_FIELDS)}"
            )
        pieces.append("%s")
        used.append(name)
    layout = "".join(pieces)
    if not used:
        return lambda _fields: template
    pick = itemgetter(*used) if len(used) > 1 else (lambda fields: (fields[used[0]],))
    all_safe = _URL_SAFE.fullmatch

    def build(fields: Mapping[str, Any]) -> str:
        values = pick(fields)
        if all_safe("".join(values)):  # the usual ids: nothing to encode
            return layout % values
        return layout % tuple(map(_url_quote, values))

    return build


def make_renderer(options: RenderOptions) -> Renderer:
    """Compile (once per batch) the renderer for ``options``."""
    plain, with_button = _templates()
    build_url = _url_builder(options.console_url_template) if options.console_url_template else None
    fill_plain, fill_button = plain.filler(), with_button.filler()  # values positional
    message = tuple.__new__  # SlackMessage(...) without the NamedTuple's Python-level __new__

    def render(context: Context) -> SlackMessage:
        fields = context.fields
        assignment = context.rows.get("assignment") or {}
        org_id = fields["org_id"]
        account = assignment.get("account_name")
        if type(account) is not str or not account:
            account = display(account)
        # the values in _NAMES order
        name = fields["connector_name"] or EMPTY
        new_status = fields["connector_new_status"] or EMPTY
        when = date_token(fields["event_epoch"], fields["event_time"])
        assignee = assignee_line(context)
        if (
            len(org_id) > _ORG_TEXT_MAX
            or "&" in org_id
            or "<" in org_id
            or ">" in org_id
            or not org_id.isprintable()  # control or bidi characters: escape neutralises
        ):
            text = f"Connector Failure for Org {escape_truncate(org_id, _ORG_TEXT_MAX)}!"
        else:
            text = f"Connector Failure for Org {org_id}!"
        connector_id, env_id = fields["connector_id"], fields["env_id"]
        if build_url is not None:
            url = build_url(fields)
            if len(url) <= URL_MAX:
                blocks = fill_button(
                    name, connector_id, org_id, env_id, account, PROVISIONING, new_status, when,
                    assignee, url,
                )  # fmt: skip
                return message(SlackMessage, (text, blocks))
        blocks = fill_plain(
            name, connector_id, org_id, env_id, account, PROVISIONING, new_status, when, assignee
        )
        return message(SlackMessage, (text, blocks))

    return render


CONNECTOR_FAILURE = PipelineSpec(
    name=NAME,
    source_topic=NOTIFICATIONS,
    description="A connector failed while provisioning: tell the org's account-team member.",
    parse=parse,
    keep=keep,
    validate=validate,
    joins=assignee_joins("org_id"),
    route=ASSIGNEE_ROUTE,
    alert_id=ALERT_ID,
    make_renderer=make_renderer,
    explain_filter=explain_filter,
)
