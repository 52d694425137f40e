"""Declarative pipeline specs: what a pipeline reads, keeps, joins, and how it renders.

A pipeline is a :class:`PipelineSpec` value, run by
:func:`alert_platform.pipelines.engine.enrich_batch`. The engine is generic; everything
specific to a kind of alert lives in the spec's functions:

1. ``parse(record) -> event``: structural decoding. Raises :class:`BadRecord` for anything the
   pipeline cannot even inspect (dead letter, stage ``parse``).
2. ``keep(event) -> bool``: the filter; events it rejects are counted as ``filtered_out``.
3. ``validate(record, event) -> fields``: content checks for kept events only, returning the
   mapping of fields the rest of the spec reads (dead letter, stage ``validate``). Events the
   filter drops are never dead-lettered for missing content.
4. ``joins``: lookups in order; an ``inner`` miss drops the event (``unmatched``), a ``left``
   miss stores ``None`` under the join's name and carries on.
5. ``route``: the Slack channel (or user id) from the enriched context; when it yields nothing,
   or a destination its ``check`` refuses (a "DM" to something that is not a Slack user id),
   the alert goes to ``RenderOptions.fallback_channel`` with ``intended_for`` attached
   (``routed_to_fallback``; a refused destination adds ``intended_for["reason"]``).
6. ``alert_id`` (a ``str.format`` template over the fields, or a function) is the readable id;
   the de-duplication key (``dedup_key``, :func:`compile_dedup_key`) is a hash of the same
   fields, so ids whose parts contain the separator never collide. ``event_time`` (the field
   holding the event's RFC 3339 UTC time, canonical ``...Z`` form as :func:`rfc3339_utc`
   writes it) anchors de-duplication; the engine dead-letters a time outside the bounds of
   :class:`RenderOptions` (stage ``validate``).
7. ``make_renderer(options) -> render``: called once per batch (compile templates, check the
   options; a bad option fails the batch, not every record), then ``render(context) ->
   SlackMessage`` per alert: the Slack text and Block Kit blocks.

Helpers at the end of this module are shared by parse/validate functions, and by pipelines
that alert an org's account-team member (the assignee joins, route and context line).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import orjson

from alert_platform.kafka.records import SourceRecord
from alert_platform.slack.blocks import display
from alert_platform.slack.mrkdwn import escape, escape_truncate
from alert_platform.wire import BadRecord, kind_of
from alert_platform.wire import format_rfc3339 as format_rfc3339  # re-exported: the one
from alert_platform.wire import parse_rfc3339 as parse_rfc3339  # RFC 3339 codec lives in
from alert_platform.wire import rfc3339_utc as rfc3339_utc  # alert_platform.wire.timestamps

if TYPE_CHECKING:
    from alert_platform.settings import Settings

DEFAULT_FALLBACK_CHANNEL = "#alerts-unrouted"


class Lookup(Protocol):
    """Anything a join can read: a :class:`~alert_platform.tables.lookup.LookupTable`, a dict."""

    def get(self, key: str, /) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class RenderOptions:
    """Deployment choices that shape every message of a batch."""

    fallback_channel: str = DEFAULT_FALLBACK_CHANNEL
    # e.g. "https://console.example/{org_id}/{env_id}/connectors/{connector_id}"; "" = no button
    console_url_template: str = ""
    # Event-time sanity, relative to the batch's ``now``: an event older than now - past or
    # newer than now + future is dead-lettered (stage "validate"). None = no bound (tests,
    # benchmarks); deployments use from_settings. A backfill is enriched against the current
    # time too, so it can reach back ``event_time_max_past`` (default 30 days), no further.
    event_time_max_past: timedelta | None = None
    event_time_max_future: timedelta | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RenderOptions:
        return cls(
            fallback_channel=settings.slack_fallback_channel,
            console_url_template=settings.connector_console_url_template,
            event_time_max_past=timedelta(hours=settings.event_time_max_past_hours),
            event_time_max_future=timedelta(minutes=settings.event_time_max_future_minutes),
        )


class Context:
    """One event as it moves through a pipeline: record, validated fields, joined rows, route."""

    __slots__ = ("channel_id", "fields", "intended_for", "record", "rows")

    def __init__(self, record: SourceRecord, fields: Mapping[str, Any]) -> None:
        self.record = record
        self.fields = fields
        self.rows: dict[str, Mapping[str, Any] | None] = {}
        self.channel_id = ""
        self.intended_for: dict[str, Any] | None = None

    @property
    def routed_to_fallback(self) -> bool:
        return self.intended_for is not None


class SlackMessage(NamedTuple):
    """What ``render`` returns: the notification text and the blocks (list or pre-encoded)."""

    text: str
    blocks: orjson.Fragment | list[dict[str, Any]]


KeyFn = Callable[[Context], str | None]
Renderer = Callable[[Context], SlackMessage]
# Why a destination is unacceptable (e.g. not a Slack user id), or None when it is fine.
DestinationCheck = Callable[[str], str | None]


@dataclass(frozen=True)
class Join:
    """Look ``key(context)`` up in ``tables[table]``; store the row as ``context.rows[as_]``."""

    table: str
    key: KeyFn
    kind: Literal["inner", "left"]
    as_: str


@dataclass(frozen=True)
class Route:
    """Where the alert goes. ``channel`` empty or ``None`` means the fallback channel, and then
    ``intended_for`` (name -> value from the context) records who should have received it.
    ``check`` (optional) vets a destination: a reason it returns sends the alert to the
    fallback channel too, with ``intended_for["reason"]``."""

    channel: KeyFn
    intended_for: Mapping[str, KeyFn] = field(default_factory=dict)
    check: DestinationCheck | None = None


@dataclass(frozen=True)
class PipelineSpec:
    """A whole pipeline, declaratively. See the module docstring for the stages."""

    name: str
    source_topic: str
    parse: Callable[[SourceRecord], Any]
    keep: Callable[[Any], bool]
    validate: Callable[[SourceRecord, Any], Mapping[str, Any]]
    joins: tuple[Join, ...]
    route: Route
    alert_id: str | Callable[[Mapping[str, Any]], str]
    make_renderer: Callable[[RenderOptions], Renderer]
    event_time_field: str = "event_time"
    description: str = ""
    # The oldest alert live delivery still posts, when this pipeline's alerts are old by design
    # (a daily producer's events are up to a day and a half old); None: ALERT_MAX_AGE_HOURS.
    max_alert_age: timedelta | None = None
    # For ``alert-platform explain`` only: why ``keep`` dropped an event, given the record and
    # what ``parse`` returned; None: the first line of ``keep``'s docstring says it.
    explain_filter: Callable[[SourceRecord, Any], str] | None = None

    def __post_init__(self) -> None:
        names = [join.as_ for join in self.joins]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: join names must be unique, got {names}")

    def alert_id_of(self, fields: Mapping[str, Any]) -> str:
        return compile_template(self.alert_id)(fields)

    def dedup_key_of(self, fields: Mapping[str, Any]) -> str:
        key_of = compile_dedup_key(self.alert_id, self.name)
        return key_of(fields, self.alert_id_of(fields))


def compile_template(
    template: str | Callable[[Mapping[str, Any]], str],
) -> Callable[[Mapping[str, Any]], str]:
    """A fast ``template.format_map`` for plain ``{name}`` templates (functions pass through)."""
    if not isinstance(template, str):
        return template
    pieces: list[str] = []
    names: list[str] = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        pieces.append(literal.replace("%", "%%"))
        if name is None:
            continue
        if spec or conversion or not name.isidentifier():
            return template.format_map  # anything fancier: let str.format do it
        pieces.append("%s")
        names.append(name)
    if not names:
        return lambda _fields: template
    layout = "".join(pieces)
    if len(names) == 1:
        only = names[0]
        return lambda fields: layout % (fields[only],)
    pick = itemgetter(*names)
    return lambda fields: layout % pick(fields)


DedupKeyFn = Callable[[Mapping[str, Any], str], str]


def compile_dedup_key(
    template: str | Callable[[Mapping[str, Any]], str], pipeline: str
) -> DedupKeyFn:
    """The de-duplication key function ``(fields, alert_id) -> key`` (shared contract 1).

    ``f"{pipeline}:{digest}"``, the digest being BLAKE2b-128 (hex) of the JSON array of the
    template's field values in template order, each as ``str``: unambiguous whatever the
    values hold (``acme-prod``/``env-1`` and ``acme``/``prod-env-1`` give one alert id, two
    keys). For an alert id function, the array holds the alert id alone.
    """
    prefix = f"{pipeline}:"
    blake2b, dumps = hashlib.blake2b, orjson.dumps
    if not isinstance(template, str):
        return lambda _fields, alert_id: (
            prefix + blake2b(dumps([alert_id]), digest_size=16).hexdigest()
        )
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    if not names:
        constant = prefix + blake2b(dumps([]), digest_size=16).hexdigest()
        return lambda _fields, _alert_id: constant
    if all(name.isidentifier() for name in names):
        pick = itemgetter(*names) if len(names) > 1 else (lambda fields: (fields[names[0]],))
    else:  # "{a.b}", "{a[0]}": the value str.format would look up
        get_field = string.Formatter().get_field
        pick = lambda fields: tuple(get_field(name, (), fields)[0] for name in names)  # noqa: E731

    empty = blake2b(digest_size=16)  # copying it beats building a hasher with keywords

    def dedup_key(fields: Mapping[str, Any], _alert_id: str) -> str:
        values = pick(fields)
        try:
            "".join(values)  # all strings (the usual case): no conversion needed
        except TypeError:
            values = [str(value) for value in values]
        hasher = empty.copy()
        hasher.update(dumps(values))
        return prefix + hasher.hexdigest()

    return dedup_key


# -- key functions for joins and routes -----------------------------------------------------


def from_field(name: str, normalise: Callable[[str], str] | None = None) -> KeyFn:
    """Key function: the validated field ``name`` (optionally normalised)."""
    if normalise is None:
        return lambda context: context.fields.get(name)
    return lambda context: _normalised(context.fields.get(name), normalise)


def from_row(join: str, column: str, normalise: Callable[[str], str] | None = None) -> KeyFn:
    """Key function: ``column`` of the row an earlier join stored as ``join``; ``None`` when
    that join missed, the column is absent or empty, or holds a non-string."""

    def key(context: Context) -> str | None:
        row = context.rows.get(join)
        if row is None:
            return None
        value = row.get(column)
        if not value or not isinstance(value, str):
            return None
        return value if normalise is None else normalise(value)

    return key


def _normalised(value: Any, normalise: Callable[[str], str]) -> str | None:
    return normalise(value) if isinstance(value, str) and value else None


# -- helpers for parse / validate functions ---------------------------------------------------


def decode_json_object(value: bytes | None, what: str = "value") -> dict[str, Any]:
    """Parse a record value that must be a JSON object, raising a precise :class:`BadRecord`."""
    if value is None:
        raise BadRecord(f"{what} is null (tombstone)")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf8:
            raise BadRecord(f"{what} is not valid UTF-8: {utf8}") from None
        raise BadRecord(f"{what} is not valid JSON: {exc}") from None
    if type(document) is not dict:
        raise BadRecord(f"{what} is {kind_of(document)}, expected a JSON object")
    return document


def decode_key(record: SourceRecord) -> str:
    """The record key as text; a null or non-UTF-8 key is a :class:`BadRecord`."""
    if record.key is None:
        raise BadRecord("record has no key")
    try:
        return record.key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(f"key is not valid UTF-8: {exc}") from None


# -- the org's account-team member: joins, route and context line -----------------------------

ASSIGNMENTS = "csdr_assignments"  # org id -> {"org_id", "csdr_email", "csdr_name", "account_name"}
SLACK_USERS = "slack_users"  # lower-cased email -> {"email", "slack_user_id", "name"}
# Longest assignee name / email quoted in the context line.
PERSON_MAX = 200


def assignee_joins(org_id_field: str = "org_id") -> tuple[Join, Join]:
    """Inner join of the org's assignment (``assignment``) on the validated field
    ``org_id_field``, then left join of the assignee's Slack user (``slack_user``) by e-mail,
    compared lower-cased."""
    return (
        Join(table=ASSIGNMENTS, key=from_field(org_id_field), kind="inner", as_="assignment"),
        Join(
            table=SLACK_USERS,
            key=from_row("assignment", "csdr_email", normalise=str.lower),
            kind="left",
            as_="slack_user",
        ),
    )


_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{1,31}", re.ASCII).fullmatch
# Longest destination text quoted in a reason.
_QUOTED_MAX = 64


def slack_user_id_problem(value: str, column: str = "slack_user_id") -> str | None:
    """Why ``value`` is not a Slack user id (``U`` or ``W`` then upper-case letters and digits,
    e.g. ``U024BE7LH``), or None: a "DM" to ``general`` would post into a public channel."""
    if _SLACK_USER_ID(value) is not None:
        return None
    shown = value if len(value) <= _QUOTED_MAX else value[: _QUOTED_MAX - 1] + "…"
    return f"{column} {shown!r} is not a Slack user id"


# To the assignee's Slack user; without one (or with an empty id, or one that is not a Slack
# user id), to the fallback channel, recording the assignee's e-mail and name as
# ``intended_for`` (and the reason, for an invalid id).
ASSIGNEE_ROUTE = Route(
    channel=from_row("slack_user", "slack_user_id"),
    intended_for={
        "email": from_row("assignment", "csdr_email"),
        "name": from_row("assignment", "csdr_name"),
    },
    check=slack_user_id_problem,
)


def _person(value: Any) -> str:
    """A name or email from a lookup row, escaped and kept short."""
    return escape_truncate(display(value), PERSON_MAX)


def assignee_line(context: Context) -> str:
    """Who the alert is for (mrkdwn, escaped): a mention, or (fallback channel) who it was
    meant for and why. Reads the ``assignment`` row of :func:`assignee_joins`."""
    assignment = context.rows.get("assignment") or {}
    name = assignment.get("csdr_name")
    if (
        type(name) is not str
        or not name
        or len(name) > PERSON_MAX
        or "&" in name  # needs_escape(), inline: this is the hot path
        or "<" in name
        or ">" in name
    ):
        name = _person(name)
    if context.intended_for is None:
        channel = context.channel_id
        if "&" in channel or "<" in channel or ">" in channel:
            channel = escape(channel)
        return f"Assigned to <@{channel}> ({name})"
    email = assignment.get("csdr_email")
    if context.intended_for.get("reason"):
        who = f"*{name}* ({_person(email)})" if email else f"*{name}*"
        why = "the Slack user id on record is not valid"
    elif email:
        who = f"*{name}* ({_person(email)})"
        why = "no Slack user is known for that email"
    else:
        who = f"*{name}*"
        why = "the assignment has no email"
    return f":warning: Meant for {who}, but {why}, so it was posted here."
