"""The onboarding pipeline end to end through the engine: no Kafka, no Dagster."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from slack_sdk.models.blocks import Block

from alert_platform.bigquery import onboarding as producer
from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.engine import BatchResult, encode_dead_letter
from alert_platform.pipelines.onboarding import (
    EVENT_TYPE,
    NEXT_STEPS,
    ONBOARDING,
    event_id,
    layout,
)
from alert_platform.pipelines.registry import PIPELINES, pipelines_for_topic
from alert_platform.pipelines.spec import ASSIGNMENTS, SLACK_USERS, RenderOptions
from alert_platform.slack.blocks import (
    CONTEXT_TEXT_MAX,
    HEADER_TEXT_MAX,
    MESSAGE_TEXT_MAX,
    SECTION_FIELD_MAX,
    SECTION_TEXT_MAX,
)
from alert_platform.slack.mrkdwn import ELLIPSIS, escape, neutralise
from alert_platform.tables.lookup import LookupTable
from alert_platform.topics import ONBOARDING_EVENTS
from tests.unit.pipeline_helpers import (
    DROP,
    contract_dedup_key,
    flat_text,
    lookup_tables,
    only_alert,
    only_dead_letter,
    run_batch,
    without_dropped,
)

NOW = datetime(2026, 3, 11, 6, 0, 0, tzinfo=UTC)
TIMESTAMP_MS = 1773208800000
ACCOUNT = "001DEMO000000000001"
TIME = "2026-03-10T09:15:00Z"
EPOCH = 1773134100
ALERT_ID = f"{ACCOUNT}-2026-03-10-onboarding-started"
DATE_TOKEN = f"<!date^{EPOCH}^{{date_short_pretty}} at {{time}}|{TIME}>"

ASSIGNMENT_ROWS = [
    {
        "org_id": "org-1",
        "csdr_email": "Jane.Doe@Example.com",
        "csdr_name": "Jane Doe",
        "account_name": "Acme (assignments)",
    },
    {"org_id": "org-2", "csdr_email": "bob@example.com", "csdr_name": "Bob <b>"},
    {"org_id": "org-3", "csdr_email": "carol@example.com", "csdr_name": "Carol"},
    {"org_id": "org-4", "csdr_email": "", "csdr_name": "Dan"},
]


def tables() -> dict[str, LookupTable]:
    return lookup_tables(ASSIGNMENT_ROWS)


def document(*, data: Any = DROP, **top: Any) -> dict[str, Any]:
    """An event as the producer writes it; ``data=`` replaces ``data``, top-level overrides
    (``DROP`` removes a key)."""
    base: dict[str, Any] = {
        "id": f"onboarding-started:{ACCOUNT}:2026-03-10",
        "type": EVENT_TYPE,
        "time": TIME,
        "data": fields() if data is DROP else data,
    }
    base.update(top)
    return without_dropped(base)


def fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "salesforce_account_id": ACCOUNT,
        "org_id": "org-1",
        "account_name": "Acme Analytics",
        "plan": "enterprise",
        "started_at": TIME,
        "region": "eu-west",
        "csdr_email": "ada.lovelace@example.com",
    }
    base.update(overrides)
    return without_dropped(base)


def event(*, data: Any = DROP, **top: Any) -> bytes:
    return orjson.dumps(document(data=data, **top))


def without_data() -> bytes:
    return orjson.dumps({k: v for k, v in document().items() if k != "data"})


def record(value: bytes | None, key: bytes | None = ACCOUNT.encode(), offset: int = 3):
    return SourceRecord(ONBOARDING_EVENTS, 1, offset, TIMESTAMP_MS, key, value)


def run(*records: SourceRecord, options: RenderOptions | None = None, lookups=None) -> BatchResult:
    return run_batch(ONBOARDING, records, lookups or tables(), options, now=NOW)


# -- the happy path -----------------------------------------------------------------------------


def test_producer_event_becomes_an_alert() -> None:
    row = {
        "salesforce_account_id": ACCOUNT,
        "org_id": "org-1",
        "account_name": "Acme Analytics",
        "plan": "enterprise",
        "onboarding_started_at": datetime(2026, 3, 10, 9, 15, tzinfo=UTC),
        "region": "eu-west",
        "csdr_email": "ada.lovelace@example.com",
    }
    key, value = producer.build_event(row, date(2026, 3, 10))
    result = run(record(value, key=key))
    message = only_alert(result)
    alert = result.alerts[0]
    assert alert.alert_id == ALERT_ID
    assert alert.key == ALERT_ID.encode()
    assert alert.channel_id == "U0JANE"
    assert alert.event_time == TIME
    assert message == {
        "alert_id": ALERT_ID,
        "dedup_key": contract_dedup_key("onboarding", ACCOUNT, "2026-03-10"),
        "pipeline": "onboarding",
        "channel_id": "U0JANE",
        "text": "Onboarding started for Acme Analytics",
        "blocks": message["blocks"],
        "source": {
            "topic": ONBOARDING_EVENTS,
            "partition": 1,
            "offset": 3,
            "timestamp": TIMESTAMP_MS,
        },
        "created_at": "2026-03-11T06:00:00Z",
        "event_time": TIME,
    }
    assert result.counts.as_dict() == {
        "read": 1,
        "filtered_out": 0,
        "unmatched": 0,
        "routed_to_fallback": 0,
        "dead_lettered": 0,
        "alerts": 1,
    }


def test_event_format_agrees_with_the_producer() -> None:
    assert EVENT_TYPE == producer.EVENT_TYPE
    assert event_id(ACCOUNT, "2026-03-10") == producer.event_id(ACCOUNT, date(2026, 3, 10))


def test_blocks_equal_the_slack_sdk_layout() -> None:
    value = only_alert(run(record(event(data=fields(account_name="<!here> & co")))))
    expected = [
        block.to_dict()
        for block in layout(
            {
                "account_name": "&lt;!here&gt; &amp; co",
                "salesforce_account_id": ACCOUNT,
                "plan": "enterprise",
                "started_at": DATE_TOKEN,
                "region": "eu-west",
                "org_id": "org-1",
                "assignee": "Assigned to <@U0JANE> (Jane Doe)",
            }
        )
    ]
    assert value["blocks"] == expected
    assert [block["type"] for block in expected] == ["header", "section", "section", "context"]


def test_blocks_show_account_plan_start_region_org_steps_and_assignee() -> None:
    blocks = only_alert(run(record(event())))["blocks"]
    assert blocks[0]["text"] == {
        "type": "plain_text",
        "text": "Onboarding started: Acme Analytics",
        "emoji": True,
    }
    assert [f["text"] for f in blocks[1]["fields"]] == [
        f"*Account*\nAcme Analytics (`{ACCOUNT}`)",
        "*Plan*\nenterprise",
        f"*Start date*\n{DATE_TOKEN}",
        "*Region*\neu-west",
        "*Org*\n`org-1`",
    ]
    steps = blocks[2]["text"]["text"].split("\n")
    assert steps[0] == "*Suggested next steps*"
    assert len(steps) == 1 + len(NEXT_STEPS)
    assert all(line.startswith("• ") for line in steps[1:])
    assert "*Acme Analytics*" in steps[1]
    assert ACCOUNT in steps[-1]
    assert blocks[3]["elements"][0]["text"] == "Assigned to <@U0JANE> (Jane Doe)"
    assert all(
        text.get("verbatim") for b in blocks[1:3] for text in [b["text"], *b.get("fields", [])]
    )


@pytest.mark.parametrize("missing", [None, "", "   ", DROP])
def test_optional_fields_absent_are_shown_as_dash(missing: Any) -> None:
    value = only_alert(
        run(record(event(data=fields(plan=missing, region=missing, csdr_email=missing))))
    )
    texts = [f["text"] for f in value["blocks"][1]["fields"]]
    assert texts[1] == "*Plan*\n—"
    assert texts[3] == "*Region*\n—"


@pytest.mark.parametrize("started_at", [None, DROP])
def test_start_date_falls_back_to_the_event_time(started_at: Any) -> None:
    value = only_alert(run(record(event(data=fields(started_at=started_at)))))
    assert value["blocks"][1]["fields"][2]["text"] == f"*Start date*\n{DATE_TOKEN}"


def test_start_date_is_shown_from_started_at() -> None:
    value = only_alert(run(record(event(data=fields(started_at="2026-03-10T11:15:00+02:00")))))
    assert value["blocks"][1]["fields"][2]["text"] == (
        f"*Start date*\n<!date^{EPOCH}^{{date_short_pretty}} at {{time}}|{TIME}>"
    )


def test_strings_are_stripped() -> None:
    value = only_alert(
        run(record(event(data=fields(account_name="  Acme  ", org_id=" org-1 ", plan=" team "))))
    )
    assert value["text"] == "Onboarding started for Acme"
    assert value["blocks"][1]["fields"][1]["text"] == "*Plan*\nteam"


# -- filter, join, route ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        event(type="onboarding.completed"),
        event(type="Onboarding.Started"),
        event(type=None),
        event(type=DROP),
        event(type=["onboarding.started"]),
        orjson.dumps({"type": "connector.status"}),  # incomplete, but not ours: no dead letter
        orjson.dumps({"type": "something", "data": "not an object", "time": 5}),
        b"{}",
    ],
)
def test_other_event_types_are_filtered_out(value: bytes) -> None:
    result = run(record(value))
    assert result.alerts == [] and result.dead_letters == []
    assert result.counts.filtered_out == 1


def test_no_assignment_means_no_alert() -> None:
    result = run(record(event(data=fields(org_id="org-unassigned"))))
    assert result.alerts == [] and result.dead_letters == []
    assert result.counts.unmatched == 1


def test_assignment_joined_by_org_id_not_by_the_events_email() -> None:
    # The event names another CSDR; the assignment (org-1 -> Jane) decides who is alerted.
    value = only_alert(run(record(event(data=fields(csdr_email="bob@example.com")))))
    assert value["channel_id"] == "U0JANE"


@pytest.mark.parametrize(
    ("org", "who", "why"),
    [
        ("org-2", "*Bob &lt;b&gt;* (bob@example.com)", "no Slack user is known for that email"),
        ("org-3", "*Carol* (carol@example.com)", "no Slack user is known for that email"),
        ("org-4", "*Dan*", "the assignment has no email"),
    ],
)
def test_no_slack_user_routes_to_fallback_and_says_for_whom(org: str, who: str, why: str) -> None:
    result = run(record(event(data=fields(org_id=org))))
    value = only_alert(result)
    assert value["channel_id"] == "#alerts-unrouted"
    row = next(r for r in ASSIGNMENT_ROWS if r["org_id"] == org)
    assert value["intended_for"] == {"email": row["csdr_email"] or None, "name": row["csdr_name"]}
    assert value["blocks"][3]["elements"][0]["text"] == (
        f":warning: Meant for {who}, but {why}, so it was posted here."
    )
    assert result.counts.routed_to_fallback == 1
    assert value["alert_id"] == ALERT_ID  # routing does not change the identity


def test_fallback_channel_is_an_option() -> None:
    options = RenderOptions(fallback_channel="C0FALLBACK")
    value = only_alert(run(record(event(data=fields(org_id="org-4"))), options=options))
    assert value["channel_id"] == "C0FALLBACK"


def test_routed_alert_has_no_intended_for() -> None:
    assert "intended_for" not in only_alert(run(record(event())))


# -- deterministic identity ---------------------------------------------------------------------


def test_the_same_event_again_gets_the_same_alert_id_and_time() -> None:
    first = run(record(event(), offset=3)).alerts[0]
    again = run(record(event(), offset=99)).alerts[0]  # re-produced by a re-run of the day
    assert (first.alert_id, first.event_time) == (again.alert_id, again.event_time)
    assert orjson.loads(first.value)["blocks"] == orjson.loads(again.value)["blocks"]


def test_alert_id_is_account_and_utc_day_of_the_event() -> None:
    # 2026-03-11T01:30+02:00 is 2026-03-10T23:30Z: the producer files it under 2026-03-10.
    value = event(time="2026-03-11T01:30:00+02:00", data=fields(started_at=DROP))
    alert = run(record(value)).alerts[0]
    assert alert.alert_id == ALERT_ID
    assert alert.event_time == "2026-03-10T23:30:00Z"
    other_day = event(id=f"onboarding-started:{ACCOUNT}:2026-03-11", time="2026-03-11T09:15:00Z")
    assert run(record(other_day)).alerts[0].alert_id == f"{ACCOUNT}-2026-03-11-onboarding-started"


def test_alert_ids_differ_per_account() -> None:
    other = "001DEMO000000000002"
    value = event(
        id=f"onboarding-started:{other}:2026-03-10", data=fields(salesforce_account_id=other)
    )
    assert run(record(value, key=other.encode())).alerts[0].alert_id == (
        f"{other}-2026-03-10-onboarding-started"
    )


# -- escaping and limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nasty", ["<!channel>", "<@U0BOSS>", "<https://evil.example|click>", "a & b <c>"]
)
def test_event_text_cannot_ping_or_link(nasty: str) -> None:
    value = only_alert(
        run(
            record(event(data=fields(account_name=nasty, plan=nasty, region=nasty, org_id="org-1")))
        )
    )
    text = flat_text(value["blocks"])
    assert nasty not in text
    assert escape(nasty) in text
    assert re.findall(r"<[^>]*>", text) == [DATE_TOKEN, "<@U0JANE>"]  # only ours
    assert nasty not in value["text"]
    assert value["text"] == f"Onboarding started for {escape(nasty)}"


def test_ids_are_escaped_in_blocks_but_not_in_the_alert_id() -> None:
    account, org = "001<!channel>", "<org>&"
    lookups = tables()
    lookups[ASSIGNMENTS].upsert(org, {**ASSIGNMENT_ROWS[0], "org_id": org})
    value = event(
        id=f"onboarding-started:{account}:2026-03-10",
        data=fields(salesforce_account_id=account, org_id=org),
    )
    message = only_alert(run(record(value, key=account.encode()), lookups=lookups))
    assert message["alert_id"] == f"{account}-2026-03-10-onboarding-started"
    text = flat_text(message["blocks"])
    assert account not in text and org not in text
    assert "001&lt;!channel&gt;" in text and "`&lt;org&gt;&amp;`" in text


@pytest.mark.parametrize(
    "name",
    [
        "مرحبا بالعالم",
        "שלום \u202eevil\u202c",
        "オンボーディング 🚀 👩‍👩‍👧",
        'q"uote \\ back\nslash',
    ],
)
def test_unicode_and_rtl_text_is_kept_controls_neutralised(name: str) -> None:
    value = only_alert(run(record(event(data=fields(account_name=name)))))
    # bidi controls neutralised; in the plain_text header a newline is a space
    header, shown = neutralise(name, multiline=False), neutralise(name)
    assert value["blocks"][0]["text"]["text"] == f"Onboarding started: {header}"
    assert value["blocks"][1]["fields"][0]["text"] == f"*Account*\n{shown} (`{ACCOUNT}`)"


def test_huge_event_text_is_cut_to_block_kit_limits() -> None:
    name = "&<>" * 3000
    value = only_alert(
        run(record(event(data=fields(account_name=name, plan="P" * 5000, region="R" * 5000))))
    )
    blocks = value["blocks"]
    assert len(blocks[0]["text"]["text"]) <= HEADER_TEXT_MAX
    for section in blocks[1:3]:
        assert len(section["text"]["text"]) <= SECTION_TEXT_MAX
    for field in blocks[1]["fields"]:
        assert len(field["text"]) <= SECTION_FIELD_MAX
    assert len(blocks[3]["elements"][0]["text"]) <= CONTEXT_TEXT_MAX
    assert len(value["text"]) <= MESSAGE_TEXT_MAX
    for text in (blocks[0]["text"]["text"], blocks[1]["fields"][0]["text"], value["text"]):
        assert ELLIPSIS in text
        assert not re.search(r"&(?!amp;|lt;|gt;)", text)
    # the ids and our tokens survive the cut
    assert blocks[1]["fields"][0]["text"].endswith(f"(`{ACCOUNT}`)")
    assert blocks[1]["fields"][2]["text"] == f"*Start date*\n{DATE_TOKEN}"
    assert ACCOUNT in blocks[2]["text"]["text"]
    assert [Block.parse(b).to_dict() for b in blocks] == blocks  # slack_sdk validates limits


# -- dead letters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "value is null (tombstone)"),
        (b"\xff\xfe", "value is not valid UTF-8"),
        (b'{"type": "onboarding.started"', "value is not valid JSON"),
        (b"[1, 2]", "value is an array, expected a JSON object"),
        (b'"onboarding.started"', "value is a string, expected a JSON object"),
        (b"null", "value is null, expected a JSON object"),
    ],
)
def test_malformed_values_are_dead_lettered(value: bytes | None, reason: str) -> None:
    got, stage = only_dead_letter(run(record(value)))
    assert got.startswith(reason)
    assert stage == "parse"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (without_data(), "data missing"),
        (event(data=None), "data is null, expected an object"),
        (event(data=orjson.dumps(fields()).decode()), "data is a string, expected an object"),
        (event(data=fields(salesforce_account_id=DROP)), "data.salesforce_account_id missing"),
        (
            event(data=fields(salesforce_account_id=None)),
            "data.salesforce_account_id is null, expected a string",
        ),
        (event(data=fields(org_id=DROP)), "data.org_id missing"),
        (event(data=fields(org_id=42)), "data.org_id is a number, expected a string"),
        (event(data=fields(org_id="  ")), "data.org_id is empty"),
        (event(data=fields(account_name="")), "data.account_name is empty"),
        (event(data=fields(account_name=DROP)), "data.account_name missing"),
        (event(data=fields(plan=3)), "data.plan is a number, expected a string or null"),
        (event(data=fields(region=["eu"])), "data.region is an array, expected a string or null"),
        (
            event(data=fields(csdr_email={})),
            "data.csdr_email is an object, expected a string or null",
        ),
        (event(time=DROP), "time missing or null"),
        (event(time=1773134100), "time is a number, expected an RFC 3339 string"),
        (event(time="2026-03-10T09:15:00"), "time is not an RFC 3339 timestamp"),
        (event(time="2026-02-30T09:15:00Z"), "time is not a valid timestamp"),
        (event(data=fields(started_at="yesterday")), "data.started_at is not an RFC 3339"),
        (event(data=fields(started_at=5)), "data.started_at is a number, expected an RFC 3339"),
        (event(id=DROP), "id missing or null"),
        (event(id=7), "id is a number, expected a string"),
        (
            event(id="evt-1"),
            f"id 'evt-1' does not match 'onboarding-started:{ACCOUNT}:2026-03-10'",
        ),
        (
            event(id=f"onboarding-started:{ACCOUNT}:2026-03-09"),  # not the day of `time`
            "does not match",
        ),
        (
            event(id="onboarding-started:001OTHER:2026-03-10"),
            "does not match",
        ),
    ],
)
def test_incomplete_onboarding_events_are_dead_lettered(value: bytes, reason: str) -> None:
    got, stage = only_dead_letter(run(record(value)))
    assert reason in got
    assert stage == "validate"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "record has no key"),
        (b"\xff", "key is not valid UTF-8"),
        (
            b"001OTHER",
            f"record key '001OTHER' does not match data.salesforce_account_id '{ACCOUNT}'",
        ),
    ],
)
def test_bad_keys_are_dead_lettered(key: bytes | None, reason: str) -> None:
    got, stage = only_dead_letter(run(record(event(), key=key)))
    assert got.startswith(reason)
    assert stage == "validate"


def test_batch_continues_after_bad_records() -> None:
    result = run(
        record(None, offset=1),
        record(event(), offset=2),
        record(event(type="other"), offset=3),
        record(event(data=fields(org_id=None)), offset=4),
        record(event(data=fields(org_id="org-unassigned")), offset=5),
        record(event(data=fields(org_id="org-4")), offset=6),
    )
    assert [d.record.offset for d in result.dead_letters] == [1, 4]
    assert [a.source.offset for a in result.alerts] == [2, 6]
    assert result.counts.as_dict() == {
        "read": 6,
        "filtered_out": 1,
        "unmatched": 1,
        "routed_to_fallback": 1,
        "dead_lettered": 2,
        "alerts": 2,
    }


def test_dead_letter_message_keeps_original_bytes() -> None:
    value = event(data=fields(org_id=None))
    message = encode_dead_letter(run(record(value, offset=9)).dead_letters[0])
    assert (message.key, message.value) == (ACCOUNT.encode(), value)
    headers = dict(message.headers)
    assert headers["error"] == b"data.org_id is null, expected a string"
    assert headers["error_stage"] == b"validate"
    assert headers["pipeline"] == b"onboarding"
    assert headers["source_topic"] == ONBOARDING_EVENTS.encode()
    assert headers["source_offset"] == b"9"


# -- the spec -----------------------------------------------------------------------------------


def test_spec_is_declarative_and_registered() -> None:
    spec = ONBOARDING
    assert spec.name == "onboarding"
    assert spec.source_topic == ONBOARDING_EVENTS
    assert [(j.table, j.kind, j.as_) for j in spec.joins] == [
        (ASSIGNMENTS, "inner", "assignment"),
        (SLACK_USERS, "left", "slack_user"),
    ]
    assert spec.alert_id == "{salesforce_account_id}-{day}-onboarding-started"
    assert PIPELINES["onboarding"] is spec
    assert pipelines_for_topic(ONBOARDING_EVENTS) == [spec]
