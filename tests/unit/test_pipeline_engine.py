"""The generic engine with a toy spec: stages, joins, routing, counts, dead letters, registry."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.connector_failure import CONNECTOR_FAILURE
from alert_platform.pipelines.engine import (
    Alert,
    BatchCounts,
    DeadLetter,
    encode_dead_letter,
    enrich_batch,
)
from alert_platform.pipelines.registry import PIPELINES, get_pipeline, pipelines_for_topic
from alert_platform.pipelines.spec import (
    BadRecord,
    Context,
    Join,
    PipelineSpec,
    RenderOptions,
    Route,
    SlackMessage,
    compile_template,
    decode_json_object,
    from_field,
    from_row,
    rfc3339_utc,
)
from alert_platform.topics import NOTIFICATIONS
from tests.unit.pipeline_helpers import contract_dedup_key

NOW = datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)


def parse(record: SourceRecord) -> dict[str, Any]:
    return decode_json_object(record.value)


def keep(event: dict[str, Any]) -> bool:
    return event.get("plan") == "enterprise"


def validate(record: SourceRecord, event: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(event.get("user"), str):
        raise BadRecord("user missing")
    iso, _ = rfc3339_utc(event.get("at"), "at")
    return {"user": event["user"], "at": iso}


def make_renderer(options: RenderOptions):
    def render(context: Context) -> SlackMessage:
        account = context.rows["account"]
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": account["name"]}}]
        return SlackMessage(f"signup {context.fields['user']}", blocks)

    return render


TOY = PipelineSpec(
    name="toy",
    source_topic="toy-events",
    parse=parse,
    keep=keep,
    validate=validate,
    joins=(
        Join(table="accounts", key=from_field("user"), kind="inner", as_="account"),
        Join(table="owners", key=from_row("account", "owner", str.lower), kind="left", as_="owner"),
    ),
    route=Route(
        channel=from_row("owner", "slack_id"),
        intended_for={"owner": from_row("account", "owner")},
    ),
    alert_id="{user}-signup",
    event_time_field="at",
    make_renderer=make_renderer,
)

ACCOUNTS = {
    "u1": {"name": "One", "owner": "Alice@X"},
    "u2": {"name": "Two", "owner": "nobody@x"},
    "u3": {"name": "Three", "owner": None},
}
OWNERS = {"alice@x": {"slack_id": "UA"}}
TABLES = {"accounts": ACCOUNTS, "owners": OWNERS}  # plain dicts satisfy the Lookup protocol


def rec(offset: int, value: Any, key: bytes | None = b"k") -> SourceRecord:
    raw = value if isinstance(value, bytes | None) else orjson.dumps(value)
    return SourceRecord("toy-events", 0, offset, 1000 + offset, key, raw)


def ev(user: Any = "u1", plan: str = "enterprise", at: Any = "2024-01-01T00:00:00+01:00") -> dict:
    return {"user": user, "plan": plan, "at": at}


def test_stages_and_counts() -> None:
    records = [
        rec(0, ev("u1")),
        rec(1, ev("u2")),
        rec(2, ev("u3")),
        rec(3, ev("ghost")),
        rec(4, ev(plan="free")),
        rec(5, b"nope"),
        rec(6, ev(user=None)),
    ]
    result = enrich_batch(TOY, records, TABLES, now=NOW)
    assert result.counts == BatchCounts(
        read=7, filtered_out=1, unmatched=1, routed_to_fallback=2, dead_lettered=2, alerts=3
    )
    assert [a.alert_id for a in result.alerts] == ["u1-signup", "u2-signup", "u3-signup"]
    first = orjson.loads(result.alerts[0].value)
    assert first == {
        "alert_id": "u1-signup",
        "dedup_key": contract_dedup_key("toy", "u1"),
        "pipeline": "toy",
        "channel_id": "UA",
        "text": "signup u1",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "One"}}],
        "source": {"topic": "toy-events", "partition": 0, "offset": 0, "timestamp": 1000},
        "created_at": "2024-01-02T03:04:05.600000Z",
        "event_time": "2023-12-31T23:00:00Z",
    }
    second = orjson.loads(result.alerts[1].value)
    assert second["channel_id"] == "#alerts-unrouted"
    assert second["intended_for"] == {"owner": "nobody@x"}
    third = orjson.loads(result.alerts[2].value)
    assert third["intended_for"] == {"owner": None}  # join key None: left join stores None
    assert [(d.record.offset, d.stage) for d in result.dead_letters] == [
        (5, "parse"),
        (6, "validate"),
    ]
    assert result.dead_letters[0].reason.startswith("value is not valid JSON")
    assert result.dead_letters[1].reason == "user missing"


def test_alert_is_ready_to_produce() -> None:
    alert = enrich_batch(TOY, [rec(0, ev())], TABLES, now=NOW).alerts[0]
    assert isinstance(alert, Alert)
    assert (alert.key, alert.channel_id, alert.event_time) == (
        b"u1-signup",
        "UA",
        "2023-12-31T23:00:00Z",
    )
    assert alert.source.offset == 0
    assert isinstance(alert.value, bytes)


def test_created_at_defaults_to_now() -> None:
    before = datetime.now(UTC)
    value = orjson.loads(enrich_batch(TOY, [rec(0, ev())], TABLES).alerts[0].value)
    created = datetime.fromisoformat(value["created_at"])
    assert before <= created <= datetime.now(UTC)
    assert value["created_at"].endswith("Z")


def test_inner_join_with_no_key_is_unmatched() -> None:
    spec = dataclasses.replace(TOY, joins=(Join("accounts", lambda c: None, "inner", "account"),))
    result = enrich_batch(spec, [rec(0, ev())], TABLES)
    assert result.counts.unmatched == 1


def test_fallback_channel_and_alert_id_function() -> None:
    spec = dataclasses.replace(TOY, alert_id=lambda fields: f"custom:{fields['user']}")
    result = enrich_batch(spec, [rec(0, ev("u2"))], TABLES, RenderOptions(fallback_channel="#fb"))
    assert result.alerts[0].alert_id == "custom:u2"
    assert result.alerts[0].channel_id == "#fb"


def boom(*_args: Any) -> Any:
    raise ValueError("boom")


@pytest.mark.parametrize(
    ("change", "stage"),
    [
        ({"parse": boom}, "parse"),
        ({"keep": boom}, "filter"),
        ({"validate": boom}, "validate"),
        ({"joins": (Join("accounts", boom, "inner", "account"),)}, "join"),
        ({"route": Route(channel=boom)}, "render"),
        ({"make_renderer": lambda options: boom}, "render"),
        ({"alert_id": "{missing}"}, "render"),
    ],
)
def test_unexpected_errors_dead_letter_the_record_not_the_batch(
    change: dict[str, Any], stage: str
) -> None:
    spec = dataclasses.replace(TOY, **change)
    result = enrich_batch(spec, [rec(0, ev()), rec(1, ev())], TABLES)
    assert len(result.dead_letters) == 2
    assert {d.stage for d in result.dead_letters} == {stage}
    assert result.dead_letters[0].reason.startswith("unexpected ")
    assert result.counts.dead_lettered == 2


def test_bad_record_raised_while_rendering_is_dead_lettered() -> None:
    def render_factory(options: RenderOptions):
        def render(context: Context) -> SlackMessage:
            raise BadRecord("cannot render")

        return render

    spec = dataclasses.replace(TOY, make_renderer=render_factory)
    dead = enrich_batch(spec, [rec(0, ev())], TABLES).dead_letters[0]
    assert (dead.reason, dead.stage) == ("cannot render", "render")


def test_missing_table_fails_fast() -> None:
    with pytest.raises(KeyError, match="owners"):
        enrich_batch(TOY, [rec(0, ev())], {"accounts": ACCOUNTS})


def test_join_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        dataclasses.replace(TOY, joins=(TOY.joins[0], TOY.joins[0]))


def test_empty_batch() -> None:
    result = enrich_batch(TOY, [], TABLES)
    assert result.alerts == [] and result.dead_letters == []
    assert result.counts == BatchCounts()


def test_counts_add_and_dict() -> None:
    a = BatchCounts(read=2, alerts=1, filtered_out=1)
    b = BatchCounts(read=3, dead_lettered=3)
    assert (a + b).as_dict() == {
        "read": 5,
        "filtered_out": 1,
        "unmatched": 0,
        "routed_to_fallback": 0,
        "dead_lettered": 3,
        "alerts": 1,
    }


def test_encode_dead_letter_headers() -> None:
    record = SourceRecord("t", 3, 42, 1700000000123, None, b"\xff", (("h", b"v"),))
    message = encode_dead_letter(DeadLetter(record, "value is not valid UTF-8: é", "parse", "p"))
    assert message.key is None and message.value == b"\xff"
    assert message.headers == [
        ("error", "value is not valid UTF-8: é".encode()),
        ("error_stage", b"parse"),
        ("pipeline", b"p"),
        ("source_topic", b"t"),
        ("source_partition", b"3"),
        ("source_offset", b"42"),
        ("source_timestamp", b"1700000000123"),
    ]


@pytest.mark.parametrize(
    ("template", "fields", "expected"),
    [
        ("{a}-{b}-x", {"a": "1", "b": "%s"}, "1-%s-x"),
        ("100% {a}", {"a": "z"}, "100% z"),
        ("{a}", {"a": 5}, "5"),
        ("static", {}, "static"),
        ("{a:>3}", {"a": "z"}, "  z"),  # format specs fall back to str.format
        ("{{a}}-{a}", {"a": "z"}, "{a}-z"),
    ],
)
def test_compile_template_matches_format_map(
    template: str, fields: dict[str, Any], expected: str
) -> None:
    assert compile_template(template)(fields) == expected == template.format_map(fields)


def test_registry() -> None:
    assert get_pipeline("connector_failure") is CONNECTOR_FAILURE
    assert PIPELINES["connector_failure"] is CONNECTOR_FAILURE
    assert pipelines_for_topic(NOTIFICATIONS) == [CONNECTOR_FAILURE]
    with pytest.raises(KeyError, match="connector_failure"):
        get_pipeline("nope")


def test_engine_knows_nothing_about_connectors() -> None:
    import inspect

    import alert_platform.pipelines.engine as engine

    source = inspect.getsource(engine).lower()
    assert "connector" not in source
    assert "dagster" not in source
