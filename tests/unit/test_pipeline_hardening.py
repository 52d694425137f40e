"""Issue 12 items 1-3 and 8 for the engine and pipelines: any exception of one record is that
record's dead letter (every stage), event-time bounds, the collision-free dedup key, DM routes
that must be Slack user ids, bounded fields, neutralised control and bidi characters."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.connector_failure import CONNECTOR_FAILURE
from alert_platform.pipelines.engine import (
    REASON_MAX,
    DeadLetter,
    encode_dead_letter,
    enrich_batch,
)
from alert_platform.pipelines.onboarding import ONBOARDING
from alert_platform.pipelines.spec import (
    BadRecord,
    Context,
    PipelineSpec,
    RenderOptions,
    Route,
    SlackMessage,
    compile_dedup_key,
    decode_json_object,
    from_field,
    rfc3339_utc,
    slack_user_id_problem,
)
from alert_platform.settings import Settings
from alert_platform.slack.blocks import VALUE_MAX
from alert_platform.slack.mrkdwn import REPLACEMENT, escape, escape_truncate, neutralise
from alert_platform.topics import NOTIFICATIONS
from tests.unit.pipeline_helpers import contract_dedup_key, lookup_tables

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
BOUNDS = RenderOptions(
    event_time_max_past=timedelta(hours=720), event_time_max_future=timedelta(minutes=60)
)
# Control and bidi characters that must never reach Slack in displayed text.
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


# -- a toy spec whose every stage can be made to raise ----------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class Falsy:
    """A filter verdict whose truth value raises (the filter stage must catch that too)."""

    def __init__(self, make: Callable[[], BaseException]) -> None:
        self.make = make

    def __bool__(self) -> bool:
        raise self.make()


def _recursion() -> BaseException:
    def down(n: int) -> int:
        return down(n + 1) + 1

    try:
        down(0)
    except RecursionError as exc:
        return exc
    raise AssertionError("unreachable")  # pragma: no cover


EXCEPTIONS: dict[str, Callable[[], BaseException]] = {
    "RecursionError": _recursion,
    "MemoryError": MemoryError,
    "OverflowError": lambda: OverflowError("date value out of range"),
    "UnicodeDecodeError": lambda: UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start"),
    "UnicodeEncodeError": lambda: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates"),
    "ValueError": lambda: ValueError("Exceeds the limit (4300 digits) for integer string"),
    "KeyError": lambda: KeyError("missing"),
    "TypeError": lambda: TypeError("nope"),
    "StopIteration": StopIteration,
    "Unprintable": Unprintable,
    "huge message": lambda: ValueError("x" * 1_000_000),
}
STAGES = ("parse", "filter", "validate", "join", "route", "intended_for", "alert_id", "render")
STAGE_OF = {"route": "render", "intended_for": "render", "alert_id": "render"}


def toy_spec(stage: str, make: Callable[[], BaseException]) -> PipelineSpec:
    """A pipeline that raises ``make()`` at ``stage`` for events marked ``"bad"``."""

    def maybe(event: dict[str, Any], here: str) -> None:
        if event.get("bad") and stage == here:
            raise make()

    def parse(record: SourceRecord) -> dict[str, Any]:
        event = decode_json_object(record.value)
        maybe(event, "parse")
        return event

    def keep(event: dict[str, Any]) -> Any:
        return Falsy(make) if event.get("bad") and stage == "filter" else True

    def validate(_record: SourceRecord, event: dict[str, Any]) -> dict[str, Any]:
        maybe(event, "validate")
        return {"user": event["user"], "at": event["at"], "event": event}

    def join_key(context: Context) -> str:
        maybe(context.fields["event"], "join")
        return context.fields["user"]

    def channel(context: Context) -> str | None:
        maybe(context.fields["event"], "route")
        return None if context.fields["event"].get("unrouted") else "#toy"

    def intended(context: Context) -> str:
        maybe(context.fields["event"], "intended_for")
        return "owner"

    def alert_id(fields: dict[str, Any]) -> str:
        maybe(fields["event"], "alert_id")
        return f"{fields['user']}-toy"

    def make_renderer(_options: RenderOptions):
        def render(context: Context) -> SlackMessage:
            maybe(context.fields["event"], "render")
            return SlackMessage("toy", [])

        return render

    from alert_platform.pipelines.spec import Join

    return PipelineSpec(
        name="toy",
        source_topic="toy",
        parse=parse,
        keep=keep,
        validate=validate,
        joins=(Join(table="users", key=join_key, kind="inner", as_="user"),),
        route=Route(channel=channel, intended_for={"owner": intended}),
        alert_id=alert_id,
        event_time_field="at",
        make_renderer=make_renderer,
    )


def toy_record(offset: int, **event: Any) -> SourceRecord:
    value = {"user": "u1", "at": iso(NOW), **event}
    return SourceRecord("toy", 0, offset, 0, b"k", orjson.dumps(value))


@pytest.mark.parametrize("exception", list(EXCEPTIONS))
@pytest.mark.parametrize("stage", STAGES)
def test_any_exception_at_any_stage_dead_letters_only_that_record(
    stage: str, exception: str
) -> None:
    spec = toy_spec(stage, EXCEPTIONS[exception])
    records = [
        toy_record(0),
        toy_record(1, bad=True, unrouted=stage == "intended_for"),
        toy_record(2, unrouted=True),
    ]
    result = enrich_batch(spec, records, {"users": {"u1": {"id": "u1"}}}, BOUNDS, now=NOW)
    assert [a.source.offset for a in result.alerts] == [0, 2]
    assert len(result.dead_letters) == 1
    dead = result.dead_letters[0]
    assert dead.record.offset == 1
    assert dead.stage == STAGE_OF.get(stage, stage)
    expected_type = "ValueError" if exception == "huge message" else exception
    assert dead.reason.startswith(f"unexpected {expected_type}: ")
    assert len(dead.reason) <= REASON_MAX
    if exception == "Unprintable":
        assert dead.reason == "unexpected Unprintable: (the message cannot be shown)"
    message = encode_dead_letter(dead)
    assert dict(message.headers)["error_stage"] == dead.stage.encode()


def test_bad_record_with_a_strange_reason_is_still_a_dead_letter() -> None:
    class Odd(BadRecord):
        def __init__(self) -> None:
            Exception.__init__(self, "odd")
            self.reason = 42  # type: ignore[assignment]

    def parse(_record: SourceRecord) -> Any:
        raise Odd()

    spec = dataclasses.replace(toy_spec("none", MemoryError), parse=parse)
    result = enrich_batch(spec, [toy_record(0)], {"users": {}}, now=NOW)
    assert [(d.stage, d.reason) for d in result.dead_letters] == [("parse", "unexpected Odd: odd")]


def test_deeply_nested_json_through_a_recursive_parser_is_a_dead_letter() -> None:
    def parse(record: SourceRecord) -> Any:
        return json.loads(record.value)  # the stdlib recurses: RecursionError when deep

    spec = dataclasses.replace(toy_spec("none", MemoryError), parse=parse)
    deep = b"[" * 200_000 + b"]" * 200_000
    records = [toy_record(0), SourceRecord("toy", 0, 1, 0, b"k", deep), toy_record(2)]
    result = enrich_batch(spec, records, {"users": {"u1": {}}}, BOUNDS, now=NOW)
    assert [a.source.offset for a in result.alerts] == [0, 2]
    (dead,) = result.dead_letters
    assert dead.stage == "parse" and dead.reason.startswith("unexpected RecursionError")


@pytest.mark.parametrize(
    "dead_letter",
    [
        DeadLetter(SourceRecord("t", 0, 1, 2, b"k", b"v"), "\ud800 surrogate" * 10_000, "x", "p"),
        DeadLetter(SourceRecord("t\udcff", 0, 1, 2, None, None), "r", "s\ud800", "p\x00"),
        DeadLetter(None, "no record", "parse", "p"),  # type: ignore[arg-type]
        DeadLetter(SourceRecord("t", 0, 1, 2, 12, [1]), None, 3, None),  # type: ignore[arg-type]
        DeadLetter(SourceRecord("t", 10**5000, 1, 2, bytearray(b"k"), b"v"), "r", "s", "p"),
    ],
)
def test_encode_dead_letter_never_raises(dead_letter: DeadLetter) -> None:
    message = encode_dead_letter(dead_letter)
    assert message.key is None or type(message.key) is bytes
    assert message.value is None or type(message.value) is bytes
    assert [name for name, _ in message.headers][:3] == ["error", "error_stage", "pipeline"]
    for _, raw in message.headers:
        assert type(raw) is bytes
        assert len(raw.decode("utf-8")) <= REASON_MAX


# -- event-time bounds ------------------------------------------------------------------------

CF_TABLES = lookup_tables(
    [{"org_id": "org-1", "csdr_email": "jane.doe@example.com", "csdr_name": "Jane",
      "account_name": "Acme"}]
)  # fmt: skip


def cf_event(time: Any = None, **labels: Any) -> bytes:
    base = {
        "connector_old_status": "Provisioning",
        "connector_new_status": "Failed",
        "org_id": "org-1",
        "env_id": "env-1",
        "connector_id": "lcc-1",
        "connector_name": "orders",
    }
    document = {"time": iso(NOW) if time is None else time, "data": {"labels": base | labels}}
    return orjson.dumps(document)


def cf_run(*values: bytes, options: RenderOptions = BOUNDS, tables: Any = None, key=b"org-1"):
    records = [SourceRecord(NOTIFICATIONS, 0, i, 0, key, v) for i, v in enumerate(values)]
    return enrich_batch(CONNECTOR_FAILURE, records, tables or CF_TABLES, options, now=NOW)


PAST = "is more than 720 h in the past (ALERT_EVENT_TIME_MAX_PAST_HOURS)"
FUTURE = "is more than 60 min in the future (ALERT_EVENT_TIME_MAX_FUTURE_MINUTES)"


@pytest.mark.parametrize(
    ("time", "reason"),
    [
        ("0001-01-01T00:00:00Z", f"event time 0001-01-01T00:00:00Z {PAST}"),
        ("9999-12-31T23:00:00Z", f"event time 9999-12-31T23:00:00Z {FUTURE}"),
        (iso(NOW - timedelta(days=31)), f"event time {iso(NOW - timedelta(days=31))} {PAST}"),
        (iso(NOW + timedelta(hours=2)), f"event time {iso(NOW + timedelta(hours=2))} {FUTURE}"),
        (iso(NOW - timedelta(hours=720, seconds=1)), "event time "),
        (iso(NOW + timedelta(minutes=60, seconds=1)), "event time "),
        ("0001-01-01T00:00:00.5+00:30", "time '0001-01-01T00:00:00.5+00:30' is out of the"),
        ("9999-12-31T23:00:00-05:00", "time '9999-12-31T23:00:00-05:00' is out of the supported"),
    ],
)
def test_event_time_outside_the_bounds_is_dead_lettered_at_validate(time: str, reason: str) -> None:
    result = cf_run(cf_event(time))
    assert result.alerts == []
    (dead,) = result.dead_letters
    assert dead.stage == "validate"
    assert dead.reason.startswith(reason), dead.reason


@pytest.mark.parametrize(
    "time",
    [
        iso(NOW - timedelta(hours=720)),  # exactly on the bounds
        iso(NOW + timedelta(minutes=60)),
        iso(NOW - timedelta(hours=719, minutes=59)),  # just inside
        iso(NOW + timedelta(minutes=59, seconds=59, microseconds=999_000)),
        (NOW + timedelta(minutes=50)).astimezone(UTC).isoformat(),  # "+00:00", not canonical
        "2026-12-01T17:30:00+05:00",  # = 12:30Z: inside although its text sorts later
    ],
)
def test_event_time_inside_the_bounds_is_an_alert(time: str) -> None:
    result = cf_run(cf_event(time))
    assert result.dead_letters == [] and len(result.alerts) == 1


def test_bounds_are_relative_to_now_and_off_without_options() -> None:
    old = cf_event("2024-01-01T00:00:00Z")
    assert len(cf_run(old, options=RenderOptions()).alerts) == 1
    later = enrich_batch(
        CONNECTOR_FAILURE,
        [SourceRecord(NOTIFICATIONS, 0, 0, 0, b"org-1", old)],
        CF_TABLES,
        BOUNDS,
        now=datetime(2024, 1, 20, tzinfo=UTC),  # a backfill within 30 days of the event
    )
    assert len(later.alerts) == 1


def test_render_options_from_settings_carry_the_bounds() -> None:
    options = RenderOptions.from_settings(
        Settings(event_time_max_past_hours=48, event_time_max_future_minutes=5)
    )
    assert options.event_time_max_past == timedelta(hours=48)
    assert options.event_time_max_future == timedelta(minutes=5)
    result = cf_run(cf_event(iso(NOW - timedelta(hours=49))), options=options)
    assert result.dead_letters[0].reason.endswith(
        "is more than 48 h in the past (ALERT_EVENT_TIME_MAX_PAST_HOURS)"
    )


def test_rfc3339_out_of_range_in_utc_is_a_bad_record() -> None:
    with pytest.raises(BadRecord, match="out of the supported range"):
        rfc3339_utc("9999-12-31T23:59:59-00:01")
    assert rfc3339_utc("0001-01-01T00:00:00Z") == ("0001-01-01T00:00:00Z", -62135596800)


# -- the dedup key (shared contract 1) --------------------------------------------------------


def test_ids_with_the_separator_collide_as_alert_ids_not_as_dedup_keys() -> None:
    tables = lookup_tables(
        [{"org_id": org, "csdr_email": "x@example.com", "csdr_name": "X", "account_name": org}
         for org in ("acme-prod", "acme")]
    )  # fmt: skip
    first = cf_event(org_id="acme-prod", env_id="env-1", connector_id="lcc-1")
    second = cf_event(org_id="acme", env_id="prod-env-1", connector_id="lcc-1")
    records = [
        SourceRecord(NOTIFICATIONS, 0, 0, 0, b"acme-prod", first),
        SourceRecord(NOTIFICATIONS, 0, 1, 0, b"acme", second),
    ]
    result = enrich_batch(CONNECTOR_FAILURE, records, tables, BOUNDS, now=NOW)
    values = [orjson.loads(alert.value) for alert in result.alerts]
    assert [v["alert_id"] for v in values] == ["acme-prod-env-1-lcc-1-connector-failure"] * 2
    assert [v["dedup_key"] for v in values] == [
        contract_dedup_key("connector_failure", "acme-prod", "env-1", "lcc-1"),
        contract_dedup_key("connector_failure", "acme", "prod-env-1", "lcc-1"),
    ]
    assert values[0]["dedup_key"] != values[1]["dedup_key"]
    assert all(re.fullmatch(r"connector_failure:[0-9a-f]{32}", v["dedup_key"]) for v in values)


def test_dedup_key_of_every_template_kind() -> None:
    assert compile_dedup_key("{a}-{b}", "p")({"a": 1, "b": "x"}, "1-x") == contract_dedup_key(
        "p", "1", "x"
    )
    assert compile_dedup_key("{a[k]}-{b.real}", "p")({"a": {"k": "v"}, "b": 3}, "v-3") == (
        contract_dedup_key("p", "v", "3")
    )
    assert compile_dedup_key("fixed", "p")({}, "fixed") == contract_dedup_key("p")
    by_function = compile_dedup_key(lambda fields: f"id:{fields['a']}", "p")
    assert by_function({"a": 1}, "id:1") == contract_dedup_key("p", "id:1")
    assert ONBOARDING.dedup_key_of(
        {"salesforce_account_id": "001", "day": "2026-03-10"}
    ) == contract_dedup_key("onboarding", "001", "2026-03-10")


# -- routing ----------------------------------------------------------------------------------


def routed(slack_user_id: Any) -> dict[str, Any]:
    tables = lookup_tables(
        [{"org_id": "org-1", "csdr_email": "jane.doe@example.com", "csdr_name": "Jane",
          "account_name": "Acme"}],
        [{"email": "jane.doe@example.com", "slack_user_id": slack_user_id, "name": "Jane"}],
    )  # fmt: skip
    (alert,) = cf_run(cf_event(), tables=tables).alerts
    return orjson.loads(alert.value)


@pytest.mark.parametrize("user_id", ["U024BE7LH", "W012A3CDE", "U0JANE"])
def test_a_slack_user_id_gets_the_dm(user_id: str) -> None:
    value = routed(user_id)
    assert value["channel_id"] == user_id and "intended_for" not in value


@pytest.mark.parametrize(
    ("user_id", "shown"),
    [
        ("general", "'general'"),
        ("#general", "'#general'"),
        ("C024BE7LH", "'C024BE7LH'"),
        ("u024be7lh", "'u024be7lh'"),
        ("U024 BE7LH", "'U024 BE7LH'"),
        ("U" + "1" * 900_000, "'U" + "1" * 62 + "…'"),
    ],
)
def test_a_dm_to_something_else_goes_to_the_fallback_with_the_reason(
    user_id: str, shown: str
) -> None:
    value = routed(user_id)
    assert value["channel_id"] == "#alerts-unrouted"
    reason = f"slack_user_id {shown} is not a Slack user id"
    assert value["intended_for"] == {"email": "jane.doe@example.com", "name": "Jane",
                                     "reason": reason}  # fmt: skip
    context = value["blocks"][2]["elements"][0]["text"]
    assert "the Slack user id on record is not valid" in context
    assert len(orjson.dumps(value)) < 8_000


def test_slack_user_id_problem() -> None:
    assert slack_user_id_problem("U024BE7LH") is None
    assert slack_user_id_problem("general") == "slack_user_id 'general' is not a Slack user id"


def test_channel_routes_are_kept_and_oversized_destinations_refused() -> None:
    def spec_to(destination: Any) -> PipelineSpec:
        toy = toy_spec("none", MemoryError)
        return dataclasses.replace(
            toy, route=Route(channel=lambda _c: destination, intended_for={"x": from_field("user")})
        )

    for channel in ("#general", "C024BE7LH", "G024BE7LH", "general"):
        (alert,) = enrich_batch(spec_to(channel), [toy_record(0)], {"users": {"u1": {}}}).alerts
        assert alert.channel_id == channel
    big = spec_to("#" + "x" * 900_000)
    (alert,) = enrich_batch(big, [toy_record(0)], {"users": {"u1": {}}}).alerts
    value = orjson.loads(alert.value)
    assert value["channel_id"] == "#alerts-unrouted"
    assert value["intended_for"] == {
        "x": "u1", "reason": "destination is 900001 characters long, more than 255"
    }  # fmt: skip


# -- size bounds and control characters -------------------------------------------------------

HUGE = "<!here>" + "n" * 900_000


def texts(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in ([v] if k == "text" and isinstance(v, str)
                                                       else texts(v))]  # fmt: skip
    if isinstance(value, list):
        return [t for item in value for t in texts(item)]
    return []


def test_a_900_kb_value_anywhere_makes_a_small_message() -> None:
    tables = lookup_tables(
        [{"org_id": "org-1", "csdr_email": HUGE, "csdr_name": HUGE, "account_name": HUGE}],
        [],
    )
    huge = cf_event(connector_name=HUGE, connector_new_status=HUGE)
    (alert,) = cf_run(huge, tables=tables).alerts
    value = orjson.loads(alert.value)
    assert len(alert.value) < 12_000, len(alert.value)
    assert all(len(v) <= VALUE_MAX for v in value["intended_for"].values())
    assert value["intended_for"]["name"].endswith("…")
    for text in texts(value):
        # no run of a copied value longer than VALUE_MAX in any text
        assert max(map(len, re.findall("n+", text)), default=0) < VALUE_MAX
    assert not any("<!here>" in text for text in texts(value))


def test_onboarding_values_are_bounded_too() -> None:
    from tests.unit.test_pipeline_onboarding import event as ob_event
    from tests.unit.test_pipeline_onboarding import fields, record, tables

    value = ob_event(data=fields(account_name=HUGE, plan=HUGE, region=HUGE))
    result = enrich_batch(ONBOARDING, [record(value)], tables(), now=NOW)
    (alert,) = result.alerts
    assert len(alert.value) < 12_000
    assert len(orjson.loads(alert.value)["text"]) <= len("Onboarding started for ") + VALUE_MAX


CONTROLS = "a\x00b\x07c\x1bd\x7fe\x85f\u202eg\u2066h\u200ei\u061cj\r\x0bk"


def test_control_and_bidi_characters_never_reach_slack() -> None:
    tables = lookup_tables(
        [{"org_id": "org-1", "csdr_email": "e\u202e@x", "csdr_name": CONTROLS,
          "account_name": "Acme\x00\u202e" + "\n2nd line"}],
        [],
    )  # fmt: skip
    value = cf_run(
        cf_event(connector_name="name\u202etxt.exe\x00", connector_new_status="\x9bFailed\nx"),
        tables=tables,
    ).alerts[0]
    message = orjson.loads(value.value)
    for text in texts(message):
        assert FORBIDDEN.search(text) is None, text
    header = message["blocks"][0]["text"]["text"]
    assert header == f"Connector failure: name{REPLACEMENT}txt.exe{REPLACEMENT}"
    assert REPLACEMENT in message["blocks"][2]["elements"][0]["text"]  # the assignee's name


def test_control_characters_in_the_org_id_text() -> None:
    org = "org\u202e-1\x00"
    tables = lookup_tables(
        [{"org_id": org, "csdr_email": "", "csdr_name": "X", "account_name": "A"}], []
    )
    (alert,) = cf_run(cf_event(org_id=org), tables=tables, key=org.encode()).alerts
    text = orjson.loads(alert.value)["text"]
    assert text == f"Connector Failure for Org org{REPLACEMENT}-1{REPLACEMENT}!"


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=80), account=st.text(max_size=80), person=st.text(max_size=80))
def test_no_forbidden_character_survives_any_text(name: str, account: str, person: str) -> None:
    tables = lookup_tables(
        [{"org_id": "org-1", "csdr_email": "jane.doe@example.com", "csdr_name": person,
          "account_name": account}]
    )  # fmt: skip
    (alert,) = cf_run(cf_event(connector_name=name), tables=tables).alerts
    message = orjson.loads(alert.value)
    for text in texts(message):
        assert FORBIDDEN.search(text) is None, text
    header = message["blocks"][0]["text"]["text"]
    assert "\n" not in header and "\t" not in header


def test_neutralise_and_escape() -> None:
    assert neutralise("plain ✓ عربى 👩‍👩‍👧") == "plain ✓ عربى 👩‍👩‍👧"
    assert neutralise("a\nb\tc\x00\u202e") == f"a\nb\tc{REPLACEMENT}{REPLACEMENT}"
    assert neutralise("a\nb\tc", multiline=False) == "a b c"
    assert escape("<\x00>\u2067&") == f"&lt;{REPLACEMENT}&gt;{REPLACEMENT}&amp;"
    assert escape_truncate("\x00" * 10, 4) == REPLACEMENT * 3 + "…"
    for char in map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x61C, 0x200E, 0x200F,
                          *range(0x202A, 0x202F), *range(0x2066, 0x206A)]):  # fmt: skip
        expected = char if char in "\n\t" else REPLACEMENT
        assert escape(char) == expected, hex(ord(char))
