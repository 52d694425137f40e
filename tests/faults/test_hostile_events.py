"""Scenario 4: hostile and malformed events, through the pure engine and one real pass.

Engine (fast, property-based with hypothesis, plus a fixed corpus): arbitrary bytes, arbitrary
JSON documents and well-formed events whose every text field is hostile never break a batch;
each record ends in exactly one bucket; a malformed one is dead-lettered with a precise reason;
a hostile one yields an alert whose every text field is escaped (``&``, ``<``, ``>`` as
entities): no ``<!``, ``<@``, ``<http``, ``<script`` or any other raw ``<`` / ``>`` survives but
the platform's own tokens, the assignee mention (``Assigned to <@U...>``) and the date token
(``<!date^epoch^...|fallback>``).

Poison records (issue 12 item 1): deeply nested JSON (also inside the ``data`` string),
numbers no double holds, lone surrogates, times beyond year 9999 in UTC, impossible dates,
control and bidi characters in every text, a "DM" to a channel name, 900 kB lookup values,
interleaved with ordinary events: each poison record is dead-lettered with its reason or
becomes a bounded, neutralised alert, and every ordinary event becomes its alert once.

Clocks (item 2): event times of year 1, 9999, now - 31 days, now + 2 h are dead-lettered at
stage ``validate`` with the bound they break; times just inside the bounds become alerts.

Real pass: all of it goes to a private Kafka broker (hostile lookup rows too), the tail sensor
and its runs execute in process (as ``tests/integration/test_dagster_flow.py`` does), alerts
are delivered to the Slack sandbox: every malformed record is in ``alerts-dlq`` with its
reason, every hostile alert is in Slack exactly once and escaped, every run succeeds, and an
ordinary event produced afterwards still becomes an alert (the pipeline never stops). The
rows ``hostile events: Kafka + Slack pass``, ``poison records: engine`` and ``clocks:
enrichment`` of the fault table count what that pass did.

Event times are relative to the real clock (delivery refuses alerts older than the maximum
alert age, enrichment those outside the event-time bounds).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from dagster import DagsterInstance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alert_platform import topics
from alert_platform.delivery.messages import ALERT_ID_MAX, InvalidMessage, message_from_value
from alert_platform.kafka.records import SourceRecord
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.pipelines.connector_failure import ASSIGNMENTS, CONNECTOR_FAILURE, SLACK_USERS
from alert_platform.pipelines.engine import BatchResult, enrich_batch
from alert_platform.pipelines.spec import RenderOptions
from alert_platform.settings import Settings
from alert_platform.slack.mrkdwn import escape
from alert_platform.tables.lookup import LookupTable
from tests.faults.results import record, tally


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


NOW = datetime.now(UTC).replace(microsecond=0)
TIME = iso(NOW - timedelta(hours=2))
# The deployment's defaults (Settings): 720 h back, 60 min ahead.
BOUNDS = RenderOptions(
    event_time_max_past=timedelta(hours=720), event_time_max_future=timedelta(minutes=60)
)
PAST = "is more than 720 h in the past (ALERT_EVENT_TIME_MAX_PAST_HOURS)"
FUTURE = "is more than 60 min in the future (ALERT_EVENT_TIME_MAX_FUTURE_MINUTES)"
# Control and bidi characters that must never reach Slack in displayed text.
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
STAGES = {"parse", "filter", "validate", "join", "render"}
INJECTIONS = (
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<@U123>",
    "<@W0ADMIN|admin>",
    "<#C0GENERAL>",
    "<https://evil.example|click>",
    "<http://evil.example>",
    "<mailto:ceo@example.com|ceo>",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "&lt;!channel&gt;",
    "&amp;",
    "& < >",
    "*bold* _it_ ~st~ `code` ```block```",
    "\u202eevil\u202c",  # right-to-left override
    "مرحبا بالعالم",
    "שלום",
    "名前テスト",
    "🚀🔥",
    "\u0000\u0007\t\n",
)
# The platform's own Slack tokens: the date (``date_token``) and the assignee mention.
DATE_TOKEN = re.compile(r"<!date\^\d+\^[^|<>]*\|[^<>]*>")
ASSIGNEE = re.compile(r"^Assigned to <@(U[A-Z0-9]+)> ")
BAD_ENTITY = re.compile(r"&(?!amp;|lt;|gt;)")

EXAMPLES: dict[str, int] = {}


def _count(name: str, n: int = 1) -> None:
    EXAMPLES[name] = EXAMPLES.get(name, 0) + n


def _measure(result: BatchResult, expected: Iterable[int] | None) -> None:
    """Count, from what the engine produced, the alerts expected (records at ``expected``
    offsets), rendered exactly once, lost and duplicated (a record or a dedup key giving more
    than one alert). ``expected=None``: nothing is known to be expected (arbitrary input):
    only duplicates are counted."""
    produced = [str(alert.source.offset) for alert in result.alerts]
    figures = tally(() if expected is None else map(str, expected), produced)
    keys = [orjson.loads(alert.value)["dedup_key"] for alert in result.alerts]
    twice = len(keys) - len(set(keys))
    if expected is not None:
        _count("expected", figures["alerts_expected"])
        _count("once", figures["delivered_once"])
        _count("lost", figures["lost"])
    _count("duplicated", max(figures["duplicated"], twice))


# -- checks ---------------------------------------------------------------------------------


def text_fields(value: Any) -> Iterator[str]:
    """Every text of a message: the ``text`` fallback and each block text object's ``text``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from text_fields(item)
    elif isinstance(value, list):
        for item in value:
            yield from text_fields(item)


def unescaped(message: dict[str, Any], assignee: str | None) -> list[str]:
    """Texts of ``message`` holding a control sequence the platform did not write itself."""
    bad = []
    for text in text_fields({"text": message.get("text"), "blocks": message.get("blocks")}):
        cleaned = DATE_TOKEN.sub("", text)
        mention = ASSIGNEE.match(cleaned)
        if mention is not None and mention.group(1) == assignee:
            cleaned = cleaned[mention.end() :]
        if "<" in cleaned or ">" in cleaned or BAD_ENTITY.search(cleaned):
            bad.append(text)
    return bad


def check_batch(result: BatchResult, records: list[SourceRecord]) -> None:
    """Every record in exactly one bucket; reasons precise; alerts escaped."""
    counts = result.counts
    assert counts.read == len(records)
    assert (
        counts.filtered_out + counts.unmatched + counts.dead_lettered + counts.alerts == counts.read
    )
    assert counts.dead_lettered == len(result.dead_letters)
    assert counts.alerts == len(result.alerts)
    for dead in result.dead_letters:
        assert dead.stage in STAGES
        assert dead.reason and isinstance(dead.reason, str)
        assert not dead.reason.startswith("unexpected "), dead.reason  # a named reason
    for alert in result.alerts:
        value = orjson.loads(alert.value)
        assignee = value["channel_id"] if value["channel_id"].startswith("U") else None
        assert unescaped(value, assignee) == [], value
        assert len(alert.alert_id) <= ALERT_ID_MAX
    _count("rendered", len(result.alerts))
    _count("dead", len(result.dead_letters))


# -- events and tables ----------------------------------------------------------------------


def labels(**overrides: Any) -> dict[str, Any]:
    base = {
        "connector_old_status": "Provisioning",
        "connector_new_status": "Failed",
        "org_id": "org-1",
        "env_id": "env-1",
        "connector_id": "lcc-1",
        "connector_name": "orders-sink",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def event(
    labels_: dict[str, Any] | None = None, *, data_as_string: bool = True, **top: Any
) -> bytes:
    data: Any = {"labels": labels_ if labels_ is not None else labels()}
    document = {"id": "evt-1", "type": "connector.status", "time": TIME, "data": data}
    if data_as_string:
        document["data"] = json.dumps(data)
    document.update(top)
    return json.dumps(document).encode()


def source(key: bytes | None, value: bytes | None, offset: int = 0) -> SourceRecord:
    return SourceRecord(topics.NOTIFICATIONS, 0, offset, 1_795_000_000_000, key, value, ())


def tables(assignments: list[dict[str, Any]], users: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        ASSIGNMENTS: LookupTable.from_rows(ASSIGNMENTS, "org_id", assignments),
        SLACK_USERS: LookupTable.from_rows(SLACK_USERS, "email", users, normalise_key=str.lower),
    }


# -- the fixed corpus -----------------------------------------------------------------------

HOSTILE_NAME = "<!channel> <@U123> <https://evil.example|click> <script>alert(1)</script> & co"
HOSTILE_ACCOUNT = "<https://evil.example|Acme> & <!here>"
HOSTILE_PERSON = "<!everyone> Mallory <@U0ADMIN>"
RTL_NAME = "\u202eknil-live\u202c مرحبا שלום 名前 🚀"
HOSTILE_ORG = "org-<!here>&<@U1>"
BIG = 900_000  # under librdkafka's default message.max.bytes (1,000,000) for the Kafka pass


@dataclass(frozen=True)
class Case:
    """A corpus record and what must become of it: ``dlq`` (stage, reason prefix), ``alert``
    (hostile texts that must reach Slack escaped), or ``dropped`` (filtered out: not ours)."""

    name: str
    key: bytes | None
    value: bytes | None
    outcome: str
    stage: str = ""
    reason: str = ""
    org: str = "org-1"
    shown: tuple[str, ...] = ()
    group: str = "hostile"  # hostile | poison | clock: the fault-table row it counts in
    channel: str = ""  # where the alert goes: "" = the assignee's Slack user
    posted: bool = True  # an alert Slack should get (False: older than the maximum alert age)


def corpus(big: int = BIG) -> list[Case]:
    nested = b'{"type":"Provisioning","data":' + b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        Case("invalid UTF-8", b"org-1", b'\xff\xfe{"Provisioning"}', "dlq", "parse",
             "value is not valid UTF-8: 'utf-8' codec can't decode byte 0xff"),
        Case("invalid JSON", b"org-1", b'{"type": "Provisioning", "data": ', "dlq", "parse",
             "value is not valid JSON: "),
        Case("empty value", b"org-1", b"", "dlq", "parse", "value is not valid JSON: "),
        Case("JSON array", b"org-1", b'["Provisioning"]', "dlq", "parse",
             "value is an array, expected a JSON object"),
        Case("data as a number", b"org-1",
             json.dumps({"id": "e", "type": "Provisioning", "time": TIME, "data": 42}).encode(),
             "dlq", "parse", "data is a number, expected an object or a JSON string"),
        Case("data as a number, not a provisioning event", b"org-1",
             json.dumps({"id": "e", "type": "other", "time": TIME, "data": 42}).encode(),
             "dropped"),
        Case("data string not JSON", b"org-1",
             json.dumps({"id": "e", "time": TIME, "data": "Provisioning {"}).encode(),
             "dlq", "parse", "data is a string but not valid JSON: "),
        Case("deeply nested (5,000 levels)", b"org-1", nested, "dlq", "parse",
             "value is not valid JSON: "),
        Case("labels missing", b"org-1",
             json.dumps({"id": "e", "type": "Provisioning", "data": {"foo": 1}}).encode(),
             "dlq", "parse", "data.labels missing"),
        Case("labels not an object", b"org-1",
             json.dumps({"type": "Provisioning", "data": {"labels": "x"}}).encode(),
             "dlq", "parse", "data.labels is a string, expected an object"),
        Case("label connector_id missing", b"org-1", event(labels(connector_id=_DROP)), "dlq",
             "validate", "labels.connector_id missing"),
        Case("label org_id a number", b"org-1", event(labels(org_id=7)), "dlq", "validate",
             "labels.org_id is a number, expected a string"),
        Case("time not RFC 3339", b"org-1", event(time="yesterday"), "dlq", "validate",
             "time is not an RFC 3339 timestamp: 'yesterday'"),
        Case("null key", None, event(labels(connector_id="lcc-nokey")), "dlq", "validate",
             "record has no key"),
        Case("key not UTF-8", b"\xffkey", event(labels(connector_id="lcc-badkey")), "dlq",
             "validate", "key is not valid UTF-8: "),
        Case("key and org_id differ", b"org-2", event(labels(connector_id="lcc-mismatch")),
             "dlq", "validate", "record key 'org-2' does not match labels.org_id 'org-1'"),
        Case("tombstone", b"org-1", None, "dlq", "parse", "value is null (tombstone)"),
        Case("ids longer than the ledger holds", b"org-1",
             event(labels(connector_id="c" * 600)), "dlq", "render",
             "alert id is 630 characters long, more than the delivery ledger's 512"),
        Case(f"{big // 1000} kB invalid JSON", b"org-1", b'{"Provisioning": "' + b"x" * big,
             "dlq", "parse", "value is not valid JSON: "),
        Case("mrkdwn/HTML injection in every event text", b"org-1",
             event(labels(connector_id="lcc-inject", connector_name=HOSTILE_NAME,
                          connector_new_status="<!channel>", env_id="<@U999>")),
             "alert", shown=(HOSTILE_NAME,)),
        Case("injection in the org id (and its lookup rows)", HOSTILE_ORG.encode(),
             event(labels(org_id=HOSTILE_ORG, connector_id="lcc-org")), "alert",
             org=HOSTILE_ORG, shown=(HOSTILE_ACCOUNT,)),
        Case("unicode and RTL text", b"org-1",
             event(labels(connector_id="lcc-rtl", connector_name=RTL_NAME)), "alert",
             shown=(RTL_NAME,)),
        Case(f"{big // 1000} kB connector name", b"org-1",
             event(labels(connector_id="lcc-big", connector_name="<!here>" + "n" * big)),
             "alert"),
        Case("data as an object", b"org-1",
             event(labels(connector_id="lcc-object"), data_as_string=False), "alert"),
        Case("unassigned org: no alert", b"org-none",
             event(labels(org_id="org-none", connector_id="lcc-none")), "dropped"),
    ]  # fmt: skip


def corpus_lookups(slack_user_id: str, email: str) -> tuple[list[dict[str, Any]], list[dict]]:
    assignments = [
        {"org_id": "org-1", "csdr_email": email, "csdr_name": HOSTILE_PERSON,
         "account_name": "Acme <Ltd> & Co"},
        {"org_id": HOSTILE_ORG, "csdr_email": email.upper(), "csdr_name": "Bob",
         "account_name": HOSTILE_ACCOUNT},
    ]  # fmt: skip
    users = [{"email": email, "slack_user_id": slack_user_id, "name": "<!channel> user"}]
    return assignments, users


def _labels_of(case: Case) -> dict[str, Any]:
    value = json.loads(case.value or b"{}")
    return value["data"] if isinstance(value["data"], dict) else json.loads(value["data"])


def expected_alert_id(case: Case) -> str:
    found = _labels_of(case)["labels"]
    return f"{found['org_id']}-{found['env_id']}-{found['connector_id']}-connector-failure"


# -- poison records and clocks --------------------------------------------------------------

FALLBACK = "#alerts-unrouted"
CONTROLS = (
    "nul\x00 bel\x07 esc\x1b del\x7f c1\x85\x9b rlo\u202etxt.exe lri\u2066 lrm\u200e alm\u061c"
)
NORMALS = 4  # ordinary events among the poison records


def poison_corpus(big: int = BIG) -> list[Case]:
    """Records that broke a sensor or a ledger statement before (issue 12), interleaved with
    ordinary events that must become alerts as usual."""
    deep = "[" * 100_000 + "]" * 100_000
    poison = [
        Case("100,000 levels of nesting", b"org-1",
             b'{"type":"Provisioning","data":' + deep.encode() + b"}", "dlq", "parse",
             "value is not valid JSON: "),
        Case("100,000 levels of nesting in the data string", b"org-1",
             json.dumps({"time": TIME, "data": '{"labels":' + deep + ',"x":"Provisioning"}'}
                        ).encode(),
             "dlq", "parse", "data is a string but not valid JSON: "),
        Case("a number no double holds", b"org-1",
             b'{"type":"Provisioning","time":1e999,"data":{}}', "dlq", "parse",
             "value is not valid JSON: number is infinity"),
        Case("a 31-digit org id", b"org-1", event(labels(org_id=10**30, connector_id="lcc-int")),
             "dlq", "validate", "labels.org_id is a number, expected a string"),
        Case("a lone surrogate", b"org-1",
             event(labels(connector_id="lcc-surrogate", connector_name="\ud800"),
                   data_as_string=False),
             "dlq", "parse", "value is not valid JSON: "),
        Case("a time past year 9999 in UTC", b"org-1",
             event(labels(connector_id="lcc-y10k"), time="9999-12-31T23:00:00-05:00"), "dlq",
             "validate", "time '9999-12-31T23:00:00-05:00' is out of the supported range in UTC"),
        Case("an impossible date", b"org-1",
             event(labels(connector_id="lcc-feb30"), time="2026-02-30T00:00:00Z"), "dlq",
             "validate", "time is not a valid timestamp: '2026-02-30T00:00:00Z'"),
        Case("control and bidi characters in every text", b"org-ctl",
             event(labels(org_id="org-ctl", connector_id="lcc-ctl", connector_name=CONTROLS,
                          connector_new_status="\x9bFailed\x00", env_id="env\u202e-1")),
             "alert", org="org-ctl"),
        Case("a DM to a channel name", b"org-dm",
             event(labels(org_id="org-dm", connector_id="lcc-dm")), "alert", org="org-dm",
             channel=FALLBACK, reason="slack_user_id 'general' is not a Slack user id"),
        Case(f"{big // 1000} kB assignee and account names", b"org-big",
             event(labels(org_id="org-big", connector_id="lcc-big-rows")), "alert",
             org="org-big"),
    ]  # fmt: skip
    normal = [
        Case(
            f"ordinary event {i}", b"org-1", event(labels(connector_id=f"lcc-normal-{i}")), "alert"
        )
        for i in range(NORMALS)
    ]
    mixed: list[Case] = []
    step = len(poison) // NORMALS + 1
    for i in range(0, len(poison), step):
        mixed += poison[i : i + step]
        if normal:
            mixed.append(normal.pop(0))
    mixed += normal
    return [dataclasses.replace(case, group="poison") for case in mixed]


def clock_corpus(now: datetime) -> list[Case]:
    """Event times outside the default bounds (720 h back, 60 min ahead) and just inside."""

    def at(name: str, time: str, outcome: str, reason: str = "", posted: bool = True) -> Case:
        labels_ = labels(connector_id=f"lcc-clock-{len(name)}-{name.split()[-1]}")
        stage = "validate" if outcome == "dlq" else ""
        return Case(name, b"org-1", event(labels_, time=time), outcome, stage, reason,
                    group="clock", posted=posted)  # fmt: skip

    month_ago, later = iso(now - timedelta(days=31)), iso(now + timedelta(hours=2))
    offset = timezone(timedelta(hours=5))
    return [
        at("year 1", "0001-01-01T00:00:00Z", "dlq", f"event time 0001-01-01T00:00:00Z {PAST}"),
        at("year 9999", "9999-12-31T23:00:00Z", "dlq", f"event time 9999-12-31T23:00:00Z {FUTURE}"),
        at("now - 31 days", month_ago, "dlq", f"event time {month_ago} {PAST}"),
        at("now + 2 h", later, "dlq", f"event time {later} {FUTURE}"),
        # enriched, but older than the maximum alert age (24 h): stale at delivery
        at("just inside: now - 719 h", iso(now - timedelta(hours=719)), "alert", posted=False),
        at("just inside: now + 55 min", iso(now + timedelta(minutes=55)), "alert"),
        at("inside, UTC+5", (now - timedelta(minutes=30)).astimezone(offset).isoformat(), "alert"),
    ]


def poison_lookups(email: str, big: int = BIG) -> tuple[list[dict[str, Any]], list[dict]]:
    assignments = [
        {"org_id": "org-ctl", "csdr_email": email, "csdr_name": CONTROLS,
         "account_name": "Acme\x00\u202e\x85 Ltd\x7f"},
        {"org_id": "org-dm", "csdr_email": "dm@example.com", "csdr_name": "Dee",
         "account_name": "DM Co"},
        {"org_id": "org-big", "csdr_email": email, "csdr_name": "<!here>" + "b" * (big // 2),
         "account_name": "<!channel>" + "a" * (big // 2)},
    ]  # fmt: skip
    users = [{"email": "dm@example.com", "slack_user_id": "general", "name": "general"}]
    return assignments, users


def check_cases(cases: list[Case], result: BatchResult, user_id: str) -> None:
    """Each case's record ended as the case says (dead letter with stage and reason, or an
    alert to the expected channel, bounded, without control or bidi characters)."""
    dead = {d.record.offset: d for d in result.dead_letters}
    alerts = {a.source.offset: orjson.loads(a.value) for a in result.alerts}
    for offset, case in enumerate(cases):
        if case.outcome == "dlq":
            assert offset in dead and offset not in alerts, case.name
            assert dead[offset].stage == case.stage, case.name
            assert dead[offset].reason.startswith(case.reason), (case.name, dead[offset].reason)
        elif case.outcome == "alert":
            assert offset in alerts and offset not in dead, case.name
            value = alerts[offset]
            assert value["alert_id"] == expected_alert_id(case)
            assert value["channel_id"] == (case.channel or user_id), case.name
            if case.reason:
                assert value["intended_for"]["reason"] == case.reason
            assert len(orjson.dumps(value)) < 20_000, case.name
            for text in text_fields({"text": value["text"], "blocks": value["blocks"]}):
                assert FORBIDDEN.search(text) is None, (case.name, text)


def test_poison_and_clock_records_through_the_engine() -> None:
    cases = poison_corpus() + clock_corpus(NOW)
    records = [source(case.key, case.value, offset) for offset, case in enumerate(cases)]
    assignments, users = corpus_lookups("U0HOSTILE", "mallory@example.com")
    more_assignments, more_users = poison_lookups("mallory@example.com")
    lookups = tables(assignments + more_assignments, users + more_users)
    result = enrich_batch(CONNECTOR_FAILURE, records, lookups, BOUNDS, now=NOW)
    check_batch(result, records)
    _measure(result, [i for i, case in enumerate(cases) if case.outcome == "alert"])
    _count("poison", len(cases))
    check_cases(cases, result, "U0HOSTILE")


ENGINE_TESTS: dict[str, Any] = {}  # filled below: name -> the test that counts under it


def test_fixed_corpus_through_the_engine() -> None:
    cases = corpus(big=1024 * 1024)  # 1 MiB values here (no Kafka size limit)
    records = [source(case.key, case.value, offset) for offset, case in enumerate(cases)]
    assignments, users = corpus_lookups("U0HOSTILE", "mallory@example.com")
    result = enrich_batch(CONNECTOR_FAILURE, records, tables(assignments, users), now=NOW)
    check_batch(result, records)
    _measure(result, [i for i, case in enumerate(cases) if case.outcome == "alert"])
    dead = {d.record.offset: d for d in result.dead_letters}
    alerts = {a.source.offset: orjson.loads(a.value) for a in result.alerts}
    for offset, case in enumerate(cases):
        _count("corpus")
        if case.outcome == "dlq":
            assert offset in dead, case.name
            assert dead[offset].stage == case.stage, case.name
            assert dead[offset].reason.startswith(case.reason), (case.name, dead[offset].reason)
        elif case.outcome == "alert":
            assert offset in alerts, case.name
            value = alerts[offset]
            assert value["alert_id"] == expected_alert_id(case)
            assert value["channel_id"] == "U0HOSTILE"
            body = json.dumps(value["blocks"], ensure_ascii=False)
            for text in case.shown:
                assert json.dumps(escape(text), ensure_ascii=False)[1:-1] in body, case.name
            assert len(orjson.dumps(value)) < 20_000, "long values are cut to Block Kit limits"
        else:
            assert offset not in dead and offset not in alerts, case.name


def test_delivery_refuses_alert_ids_the_ledger_cannot_hold() -> None:
    value = {"alert_id": "a" * (ALERT_ID_MAX + 1), "channel_id": "U1", "text": "x",
             "event_time": TIME}  # fmt: skip
    with pytest.raises(InvalidMessage, match="more than the ledger's 512"):
        message_from_value(value)
    message_from_value({**value, "alert_id": "a" * ALERT_ID_MAX})


# -- property-based ---------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
hostile_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(INJECTIONS),
    st.builds(
        lambda a, b, c: a + b + c,
        st.text(max_size=20),
        st.sampled_from(INJECTIONS),
        st.text(max_size=20),
    ),
)
nonempty_hostile = hostile_text.filter(bool)
keys = st.none() | st.binary(max_size=40) | st.just(b"org-1")


@PROPERTY
@given(
    values=st.lists(
        st.one_of(
            st.none(),
            st.binary(max_size=300),
            st.builds(
                lambda a, b: a + b"Provisioning" + b,
                st.binary(max_size=80),
                st.binary(max_size=80),
            ),
        ),
        min_size=1,
        max_size=8,
    ),
    key=keys,
)
def test_arbitrary_bytes_never_break_a_batch(values: list[bytes | None], key: bytes | None) -> None:
    _count("bytes")
    records = [source(key, value, offset) for offset, value in enumerate(values)]
    assignments, users = corpus_lookups("U0HOSTILE", "mallory@example.com")
    result = enrich_batch(CONNECTOR_FAILURE, records, tables(assignments, users), now=NOW)
    check_batch(result, records)
    _measure(result, None)


@PROPERTY
@given(
    document=st.fixed_dictionaries(
        {},
        optional={
            "id": json_values,
            "type": st.sampled_from(["Provisioning", "x"]) | json_values,
            "time": st.sampled_from([TIME, "2026-11-24T10:00:00+02:00", "nope"]) | json_values,
            "data": st.one_of(
                json_values,
                st.fixed_dictionaries({"labels": st.dictionaries(st.text(), json_values)}),
                st.fixed_dictionaries(
                    {"labels": st.fixed_dictionaries(
                        {"connector_old_status": st.just("Provisioning") | json_values},
                        optional={name: st.just("x") | json_values for name in (
                            "org_id", "env_id", "connector_id", "connector_name",
                            "connector_new_status")},
                    )}
                ).map(json.dumps),
            ),
        },
    ),
    key=keys,
)  # fmt: skip
def test_arbitrary_json_documents_never_break_a_batch(document: dict, key: bytes | None) -> None:
    _count("json")
    records = [source(key, json.dumps(document).encode())]
    assignments, users = corpus_lookups("U0HOSTILE", "mallory@example.com")
    result = enrich_batch(CONNECTOR_FAILURE, records, tables(assignments, users), now=NOW)
    check_batch(result, records)
    _measure(result, None)


@PROPERTY
@given(
    org_id=nonempty_hostile,
    env_id=nonempty_hostile,
    connector_id=nonempty_hostile,
    connector_name=hostile_text,
    new_status=hostile_text,
    account_name=hostile_text,
    csdr_name=hostile_text,
    routed=st.booleans(),
)
def test_hostile_texts_always_render_escaped(
    org_id: str,
    env_id: str,
    connector_id: str,
    connector_name: str,
    new_status: str,
    account_name: str,
    csdr_name: str,
    routed: bool,
) -> None:
    _count("hostile")
    value = event(
        labels(org_id=org_id, env_id=env_id, connector_id=connector_id,
               connector_name=connector_name, connector_new_status=new_status)
    )  # fmt: skip
    records = [source(org_id.encode(), value)]
    assignments = [{"org_id": org_id, "csdr_email": "mallory@example.com", "csdr_name": csdr_name,
                    "account_name": account_name}]  # fmt: skip
    users = [{"email": "mallory@example.com", "slack_user_id": "U0HOSTILE", "name": csdr_name}]
    result = enrich_batch(
        CONNECTOR_FAILURE, records, tables(assignments, users if routed else []), now=NOW
    )
    check_batch(result, records)
    _measure(result, [0])
    assert len(result.alerts) == 1, result.dead_letters
    message = orjson.loads(result.alerts[0].value)
    assert message["channel_id"] == ("U0HOSTILE" if routed else "#alerts-unrouted")
    body = json.dumps(message["blocks"], ensure_ascii=False)
    for text in (connector_name, account_name):
        if text and len(text) < 100:  # not cut to a Block Kit limit
            assert json.dumps(escape(text), ensure_ascii=False)[1:-1] in body


def test_record_engine_results() -> None:
    """The engine half's figures, measured by the tests above (run here if they did not run
    in this session, e.g. under ``-k``)."""
    for name, test in ENGINE_TESTS.items():
        if not EXAMPLES.get(name):
            test()
    trials = sum(EXAMPLES.get(k, 0) for k in ("corpus", "bytes", "json", "hostile", "poison"))
    record(
        "hostile events: engine (hypothesis + corpus)",
        trials=trials,
        alerts_expected=EXAMPLES.get("expected", 0),
        delivered_once=EXAMPLES.get("once", 0),  # rendered exactly once, escaped (checked)
        lost=EXAMPLES.get("lost", 0),
        duplicated=EXAMPLES.get("duplicated", 0),
        dead_lettered=EXAMPLES.get("dead", 0),
        notes=(
            "engine only (no Slack): 'delivered once' = rendered exactly once and escaped; "
            f"{EXAMPLES.get('corpus', 0)} corpus records, {EXAMPLES.get('poison', 0)} poison "
            f"and clock records, {EXAMPLES.get('bytes', 0)} arbitrary byte batches, "
            f"{EXAMPLES.get('json', 0)} arbitrary JSON documents, "
            f"{EXAMPLES.get('hostile', 0)} hostile well-formed events: no batch broke, every "
            "record in one bucket, reasons named, every alert escaped"
        ),
    )
    assert EXAMPLES.get("lost", 0) == 0 and EXAMPLES.get("duplicated", 0) == 0
    assert EXAMPLES.get("once", 0) == EXAMPLES.get("expected", 0) > 0


ENGINE_TESTS.update(
    corpus=test_fixed_corpus_through_the_engine,
    poison=test_poison_and_clock_records_through_the_engine,
    bytes=test_arbitrary_bytes_never_break_a_batch,
    json=test_arbitrary_json_documents_never_break_a_batch,
    hostile=test_hostile_texts_always_render_escaped,
)


# -- one real Kafka + Slack pass ------------------------------------------------------------


def _dead_found(cases: list[Case], dlq: list[SourceRecord]) -> int:
    """How many of the cases' expected dead letters are in ``dlq`` exactly once, with the
    original key and value, the reason and the stage (asserted per case)."""
    found_ok = 0
    for case in cases:
        if case.outcome != "dlq":
            continue
        found = [r for r in dlq if r.key == case.key and r.value == case.value]
        assert len(found) == 1, case.name
        headers = {name: raw.decode() for name, raw in found[0].headers}
        assert headers["error"].startswith(case.reason), (case.name, headers["error"])
        assert headers["error_stage"] == case.stage, case.name
        found_ok += 1
    return found_ok


@pytest.mark.integration
def test_corpus_through_kafka_and_slack(
    platform_env: Settings, sandbox: SandboxControl, instance: DagsterInstance
) -> None:
    """The hostile corpus, the poison records and the clocks in one real pass."""
    from tests.faults.harness import produce, read_topic
    from tests.integration.flow_helpers import tick_and_run, tick_delivery

    settings_ = platform_env
    user_id, email = "U0DEMO0002", "grace.hopper@example.com"  # a seeded sandbox user
    assignments, users = corpus_lookups(user_id, email)
    more_assignments, more_users = poison_lookups(email)
    rows = [(row["org_id"].encode(), json.dumps(row).encode())
            for row in assignments + more_assignments]  # fmt: skip
    produce(settings_, topics.CSDR_ASSIGNMENT, rows)
    rows = [(row["email"].encode(), json.dumps(row).encode()) for row in users + more_users]
    produce(settings_, topics.SLACK_USERS, rows)
    hostile, poison, clocks = corpus(), poison_corpus(), clock_corpus(datetime.now(UTC))
    cases = hostile + poison + clocks
    produce(settings_, topics.NOTIFICATIONS, [(case.key, case.value) for case in cases])

    enriched, runs = tick_and_run("connector_failure_tail", instance, None)
    assert runs and all(run.success for run in runs)
    _, deliveries = tick_delivery(instance)  # settles a tick, then skips what is done
    assert all(run.success for run in deliveries)
    # The pipeline goes on: an ordinary event after the corpus becomes an alert.
    after = event(labels(connector_id="lcc-after"))
    produce(settings_, topics.NOTIFICATIONS, [(b"org-1", after)])
    _, later = tick_and_run("connector_failure_tail", instance, enriched.cursor)
    assert later and all(run.success for run in later)
    _, more_deliveries = tick_delivery(instance)
    assert all(run.success for run in more_deliveries)
    posted_messages = [m for m in sandbox.messages() if m.get("metadata")]
    posted = [m["metadata"]["event_payload"]["alert_id"] for m in posted_messages]
    dlq = read_topic(settings_, topics.ALERTS_DLQ)
    delivery_dlq = read_topic(settings_, topics.SLACK_MESSAGES_DLQ)
    on_topic = [orjson.loads(r.value)["alert_id"] for r in
                read_topic(settings_, topics.SLACK_MESSAGES)]  # fmt: skip

    def alert_ids(group: list[Case], *, slack: bool) -> set[str]:
        return {expected_alert_id(case) for case in group
                if case.outcome == "alert" and (case.posted or not slack)}  # fmt: skip

    after_id = "org-1-env-1-lcc-after-connector-failure"
    ids_of = {"hostile": alert_ids(hostile, slack=True) | {after_id},
              "poison": alert_ids(poison, slack=True)}  # fmt: skip
    everything = ids_of["hostile"] | ids_of["poison"] | alert_ids(clocks, slack=False)
    figures = {group: tally(ids, [p for p in posted if p in ids]) for group, ids in ids_of.items()}
    dead_found = {"hostile": _dead_found(hostile, dlq), "poison": _dead_found(poison, dlq)}
    record(
        "hostile events: Kafka + Slack pass",
        trials=len(hostile) + 1,
        alerts_expected=figures["hostile"]["alerts_expected"],
        delivered_once=figures["hostile"]["delivered_once"],
        lost=figures["hostile"]["lost"],
        duplicated=figures["hostile"]["duplicated"],
        dead_lettered=dead_found["hostile"],
        notes=(
            f"{dead_found['hostile']} malformed records in alerts-dlq with their reasons, "
            f"{len(ids_of['hostile']) - 1} hostile alerts posted escaped, 2 dropped as not "
            f"alerts, then one ordinary event; values up to {BIG // 1000} kB"
        ),
    )
    poison_alerts = sum(1 for case in poison if case.outcome == "alert")
    record(
        "poison records: engine",
        trials=len(poison),
        alerts_expected=figures["poison"]["alerts_expected"],
        delivered_once=figures["poison"]["delivered_once"],
        lost=figures["poison"]["lost"],
        duplicated=figures["poison"]["duplicated"],
        dead_lettered=dead_found["poison"],
        notes=(
            f"Kafka + Dagster runs + Slack sandbox: {dead_found['poison']} poison records "
            "(100,000-level nesting, also in the data string; 1e999; a 31-digit id; a lone "
            "surrogate; year 10000 in UTC; Feb 30) dead-lettered with their reasons, "
            f"{poison_alerts - NORMALS} poison alerts (control/bidi characters, a DM to "
            f"'general' -> fallback, {BIG // 2000} kB lookup names) posted bounded and "
            f"neutralised, {NORMALS} ordinary events between them posted; every run succeeded"
        ),
    )
    clock_ids = alert_ids(clocks, slack=False)
    clock_figures = tally(clock_ids, [a for a in on_topic if a in clock_ids])
    clock_dead = _dead_found(clocks, dlq)
    stale_ids = clock_ids - alert_ids(clocks, slack=True)
    stale_posted = sum(1 for p in posted if p in stale_ids)
    clocks_posted = sum(1 for p in posted if p in clock_ids)
    record(
        "clocks: enrichment",
        trials=len(clocks),
        alerts_expected=clock_figures["alerts_expected"],
        delivered_once=clock_figures["delivered_once"],
        lost=clock_figures["lost"],
        duplicated=clock_figures["duplicated"],
        dead_lettered=clock_dead,
        notes=(
            "Kafka + Dagster runs: 'delivered once' = on slack-messages exactly once; "
            f"{clock_dead} events (year 1, year 9999, now - 31 d, now + 2 h) dead-lettered at "
            "validate naming the bound; inside the bounds (now - 719 h, now + 55 min, a UTC+5 "
            f"time) enriched; {clocks_posted} posted to Slack, the now - 719 h one posted "
            f"{stale_posted} times (older than the 24 h maximum alert age)"
        ),
    )
    for group, found in figures.items():
        assert found["lost"] == 0 and found["duplicated"] == 0, (group, found)
    assert clock_figures["lost"] == 0 and clock_figures["duplicated"] == 0
    assert set(posted) <= everything, set(posted) - everything
    assert delivery_dlq == []
    expected_dead = sum(1 for case in cases if case.outcome == "dlq")
    assert len(dlq) == expected_dead == dead_found["hostile"] + dead_found["poison"] + clock_dead
    for message in posted_messages:
        assert unescaped(dict(message), user_id) == [], message
        assert len(orjson.dumps(dict(message))) < 40_000
        for text in text_fields({"text": message.get("text"), "blocks": message.get("blocks")}):
            assert FORBIDDEN.search(text) is None, text
