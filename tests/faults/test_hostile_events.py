"""Scenario 4: hostile and malformed events, through the pure engine and one real pass.

Engine (fast, property-based with hypothesis, plus a fixed corpus): arbitrary bytes, arbitrary
JSON documents and well-formed events whose every text field is hostile never break a batch;
each record ends in exactly one bucket; a malformed one is dead-lettered with a precise reason;
a hostile one yields an alert whose every text field is escaped (``&``, ``<``, ``>`` as
entities): no ``<!``, ``<@``, ``<http``, ``<script`` or any other raw ``<`` / ``>`` survives but
the platform's own tokens, the assignee mention (``Assigned to <@U...>``) and the date token
(``<!date^epoch^...|fallback>``).

Real pass: the corpus goes to a private Kafka broker (hostile lookup rows too), the tail sensor
and its runs execute in process (as ``tests/integration/test_dagster_flow.py`` does), alerts
are delivered to the Slack sandbox: every malformed record is in ``alerts-dlq`` with its
reason, every hostile alert is in Slack exactly once and escaped, every run succeeds, and an
ordinary event produced afterwards still becomes an alert (the pipeline never stops).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
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
from alert_platform.settings import Settings
from alert_platform.slack.mrkdwn import escape
from alert_platform.tables.lookup import LookupTable
from tests.faults.results import record, tally

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
TIME = "2026-11-24T10:00:00Z"
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


def expected_alert_id(case: Case) -> str:
    value = json.loads(case.value or b"{}")
    data = value["data"] if isinstance(value["data"], dict) else json.loads(value["data"])
    found = data["labels"]
    return f"{found['org_id']}-{found['env_id']}-{found['connector_id']}-connector-failure"


def test_fixed_corpus_through_the_engine() -> None:
    cases = corpus(big=1024 * 1024)  # 1 MiB values here (no Kafka size limit)
    records = [source(case.key, case.value, offset) for offset, case in enumerate(cases)]
    assignments, users = corpus_lookups("U0HOSTILE", "mallory@example.com")
    result = enrich_batch(CONNECTOR_FAILURE, records, tables(assignments, users), now=NOW)
    check_batch(result, records)
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
            _count("expected")
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
    assert len(result.alerts) == 1, result.dead_letters
    _count("expected")
    message = orjson.loads(result.alerts[0].value)
    assert message["channel_id"] == ("U0HOSTILE" if routed else "#alerts-unrouted")
    body = json.dumps(message["blocks"], ensure_ascii=False)
    for text in (connector_name, account_name):
        if text and len(text) < 100:  # not cut to a Block Kit limit
            assert json.dumps(escape(text), ensure_ascii=False)[1:-1] in body


def test_record_engine_results() -> None:
    """The engine half's figures (after the property tests of this module ran)."""
    if not EXAMPLES.get("bytes") or not EXAMPLES.get("hostile") or not EXAMPLES.get("corpus"):
        pytest.skip("the engine tests of this module did not run in this session")
    record(
        "hostile events: engine (hypothesis + corpus)",
        trials=sum(EXAMPLES.get(k, 0) for k in ("corpus", "bytes", "json", "hostile")),
        alerts_expected=EXAMPLES.get("expected", 0),
        delivered_once=EXAMPLES.get("expected", 0),  # rendered once, escaped (checked above)
        lost=0,
        duplicated=0,
        dead_lettered=EXAMPLES.get("dead", 0),
        notes=(
            "engine only (no Slack): 'delivered once' = rendered once and escaped; "
            f"{EXAMPLES.get('corpus', 0)} corpus records, {EXAMPLES.get('bytes', 0)} arbitrary "
            f"byte batches, {EXAMPLES.get('json', 0)} arbitrary JSON documents, "
            f"{EXAMPLES.get('hostile', 0)} hostile well-formed events: no batch broke, every "
            "record in one bucket, reasons named, every alert escaped"
        ),
    )


# -- one real Kafka + Slack pass ------------------------------------------------------------


@pytest.mark.integration
def test_corpus_through_kafka_and_slack(
    platform_env: Settings, sandbox: SandboxControl, instance: DagsterInstance
) -> None:
    from tests.faults.harness import produce, read_topic
    from tests.integration.flow_helpers import tick_and_run, tick_delivery

    settings_ = platform_env
    user_id, email = "U0DEMO0002", "grace.hopper@example.com"  # a seeded sandbox user
    assignments, users = corpus_lookups(user_id, email)
    rows = [(row["org_id"].encode(), json.dumps(row).encode()) for row in assignments]
    produce(settings_, topics.CSDR_ASSIGNMENT, rows)
    rows = [(row["email"].encode(), json.dumps(row).encode()) for row in users]
    produce(settings_, topics.SLACK_USERS, rows)
    cases = corpus()
    produce(settings_, topics.NOTIFICATIONS, [(case.key, case.value) for case in cases])
    expected = {expected_alert_id(case) for case in cases if case.outcome == "alert"}
    expected_dead = [case for case in cases if case.outcome == "dlq"]

    enriched, runs = tick_and_run("connector_failure_tail", instance, None)
    assert runs and all(run.success for run in runs)
    _, deliveries = tick_delivery(instance)  # settles a tick, then skips what is done
    assert all(run.success for run in deliveries)
    posted_messages = [m for m in sandbox.messages() if m.get("metadata")]
    # The pipeline goes on: an ordinary event after the corpus becomes an alert.
    after = event(labels(connector_id="lcc-after"))
    produce(settings_, topics.NOTIFICATIONS, [(b"org-1", after)])
    _, later = tick_and_run("connector_failure_tail", instance, enriched.cursor)
    assert later and all(run.success for run in later)
    posted = [m["metadata"]["event_payload"]["alert_id"] for m in sandbox.messages()
              if m.get("metadata")]  # fmt: skip
    dlq = read_topic(settings_, topics.ALERTS_DLQ)
    delivery_dlq = read_topic(settings_, topics.SLACK_MESSAGES_DLQ)

    figures = tally(expected | {"org-1-env-1-lcc-after-connector-failure"}, posted)
    record(
        "hostile events: Kafka + Slack pass",
        trials=len(cases) + 1,
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=len(dlq) + len(delivery_dlq),
        notes=(
            f"{len(expected_dead)} malformed records in alerts-dlq with their reasons, "
            f"{len(expected)} hostile alerts posted escaped, 2 dropped as not alerts, then one "
            f"ordinary event; values up to {BIG // 1000} kB"
        ),
    )
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["unexpected"] == 0
    assert delivery_dlq == []
    assert len(dlq) == len(expected_dead)
    for case in expected_dead:  # the original key and value, with the precise reason
        found = [r for r in dlq if r.key == case.key and r.value == case.value]
        assert len(found) == 1, case.name
        headers = {name: raw.decode() for name, raw in found[0].headers}
        assert headers["error"].startswith(case.reason), (case.name, headers["error"])
        assert headers["error_stage"] == case.stage, case.name
    for message in posted_messages:
        assert unescaped(dict(message), user_id) == [], message
