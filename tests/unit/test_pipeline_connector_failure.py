"""The connector_failure pipeline end to end through the engine: no Kafka, no Dagster."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from slack_sdk.models.blocks import Block

from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.connector_failure import (
    ASSIGNMENTS,
    CONNECTOR_FAILURE,
    SLACK_USERS,
    layout,
)
from alert_platform.pipelines.engine import BatchResult, encode_dead_letter, enrich_batch
from alert_platform.pipelines.spec import RenderOptions
from alert_platform.slack.blocks import (
    HEADER_TEXT_MAX,
    SECTION_FIELD_MAX,
    SECTION_TEXT_MAX,
)
from alert_platform.slack.mrkdwn import ELLIPSIS, escape, neutralise
from alert_platform.tables.lookup import LookupTable
from alert_platform.topics import NOTIFICATIONS
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

NOW = datetime(2024, 6, 1, 8, 0, 0, tzinfo=UTC)
TIMESTAMP_MS = 1714566900000
CONSOLE = "https://console.example/{org_id}/{env_id}/connectors/{connector_id}"

ASSIGNMENT_ROWS = [
    {
        "org_id": "org-1",
        "csdr_email": "Jane.Doe@Example.com",
        "csdr_name": "Jane Doe",
        "account_name": "Acme Inc.",
    },
    {
        "org_id": "org-2",
        "csdr_email": "bob@example.com",
        "csdr_name": "Bob <b>",
        "account_name": "Bobco",
    },
    {
        "org_id": "org-3",
        "csdr_email": "carol@example.com",
        "csdr_name": "Carol",
        "account_name": "Carol & Sons",
    },
    {"org_id": "org-4", "csdr_email": "", "csdr_name": "Dan", "account_name": None},
]


def tables() -> dict[str, LookupTable]:
    return lookup_tables(ASSIGNMENT_ROWS)


def labels(**overrides: Any) -> dict[str, Any]:
    base = {
        "connector_old_status": "Provisioning",
        "connector_new_status": "Failed",
        "org_id": "org-1",
        "env_id": "env-a",
        "connector_id": "lcc-1",
        "connector_name": "orders-cdc",
        "region": "us-east-1",
    }
    base.update(overrides)
    return without_dropped(base)


def event(
    *, data_as_string: bool = False, time: Any = "2024-05-01T12:34:56.789Z", **label_overrides: Any
) -> bytes:
    data = {"labels": labels(**label_overrides), "message": "status changed"}
    document: dict[str, Any] = {
        "id": "evt-1",
        "type": "io.confluent.cloud.connector.status",
        "data": orjson.dumps(data).decode() if data_as_string else data,
    }
    if time is not DROP:
        document["time"] = time
    return orjson.dumps(document)


def record(value: bytes | None, key: bytes | None = b"org-1", offset: int = 7) -> SourceRecord:
    return SourceRecord(NOTIFICATIONS, 2, offset, TIMESTAMP_MS, key, value)


def run(*records: SourceRecord, options: RenderOptions | None = None) -> BatchResult:
    return run_batch(CONNECTOR_FAILURE, records, tables(), options, now=NOW)


# -- the happy path -----------------------------------------------------------------------------


@pytest.mark.parametrize("data_as_string", [False, True])
def test_provisioning_failure_becomes_an_alert(data_as_string: bool) -> None:
    result = run(record(event(data_as_string=data_as_string)))
    value = only_alert(result)
    alert = result.alerts[0]
    assert alert.alert_id == "org-1-env-a-lcc-1-connector-failure"
    assert alert.key == b"org-1-env-a-lcc-1-connector-failure"
    assert alert.channel_id == "U0JANE"
    assert alert.source.offset == 7
    assert value == {
        "alert_id": "org-1-env-a-lcc-1-connector-failure",
        "dedup_key": contract_dedup_key("connector_failure", "org-1", "env-a", "lcc-1"),
        "pipeline": "connector_failure",
        "channel_id": "U0JANE",
        "text": "Connector Failure for Org org-1!",
        "blocks": value["blocks"],
        "source": {
            "topic": NOTIFICATIONS,
            "partition": 2,
            "offset": 7,
            "timestamp": TIMESTAMP_MS,
        },
        "created_at": "2024-06-01T08:00:00Z",
        "event_time": "2024-05-01T12:34:56.789000Z",
    }
    assert result.counts.as_dict() == {
        "read": 1,
        "filtered_out": 0,
        "unmatched": 0,
        "routed_to_fallback": 0,
        "dead_lettered": 0,
        "alerts": 1,
    }


def test_blocks_equal_the_slack_sdk_layout() -> None:
    value = only_alert(run(record(event(connector_name="<!channel> & co"))))
    expected = [
        block.to_dict()
        for block in layout(
            {
                "connector_name": "&lt;!channel&gt; &amp; co",
                "connector_id": "lcc-1",
                "org_id": "org-1",
                "env_id": "env-a",
                "account_name": "Acme Inc.",
                "old_status": "Provisioning",
                "new_status": "Failed",
                "event_time": "<!date^1714566896^{date_short_pretty} at {time}"
                "|2024-05-01T12:34:56.789000Z>",
                "assignee": "Assigned to <@U0JANE> (Jane Doe)",
            }
        )
    ]
    assert value["blocks"] == expected
    types = [block["type"] for block in value["blocks"]]
    assert types == ["header", "section", "context"]  # no console button unless configured


def test_blocks_name_every_required_fact() -> None:
    blocks = only_alert(run(record(event())))["blocks"]
    text = flat_text(blocks)
    for fact in ("Acme Inc.", "org-1", "env-a", "orders-cdc", "lcc-1", "Provisioning", "Failed"):
        assert fact in text
    assert "Provisioning → Failed" in blocks[1]["fields"][3]["text"]
    assert "2024-05-01T12:34:56.789000Z" in blocks[1]["fields"][4]["text"]
    assert Block.parse(blocks[0]).to_dict() == blocks[0]


# -- filter and joins ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["Running", "Failed", "provisioning", "", None, 3])
def test_other_statuses_are_filtered_out(status: Any) -> None:
    result = run(record(event(connector_old_status=status)))
    assert result.alerts == [] and result.dead_letters == []
    assert result.counts.filtered_out == 1


def test_filtered_out_even_if_other_labels_are_missing() -> None:
    value = event(connector_old_status="Running", org_id=DROP, env_id=3, time=DROP)
    result = run(record(value, key=None))
    assert result.counts.filtered_out == 1
    assert result.dead_letters == []


def test_no_assignment_means_no_alert() -> None:
    result = run(record(event(org_id="org-unknown"), key=b"org-unknown"))
    assert result.alerts == [] and result.dead_letters == []
    assert result.counts.unmatched == 1


def test_assignee_email_join_is_case_insensitive() -> None:
    # assignment says "Jane.Doe@Example.com", the users table holds "jane.doe@example.com"
    assert only_alert(run(record(event())))["channel_id"] == "U0JANE"


@pytest.mark.parametrize(
    ("org", "who", "why"),
    [
        ("org-2", "*Bob &lt;b&gt;* (bob@example.com)", "no Slack user is known for that email"),
        ("org-3", "*Carol* (carol@example.com)", "no Slack user is known for that email"),
        ("org-4", "*Dan*", "the assignment has no email"),
    ],
)
def test_no_slack_user_routes_to_fallback_and_says_for_whom(org: str, who: str, why: str) -> None:
    result = run(record(event(org_id=org), key=org.encode()))
    value = only_alert(result)
    assert value["channel_id"] == "#alerts-unrouted"
    assert result.counts.routed_to_fallback == 1
    row = next(r for r in ASSIGNMENT_ROWS if r["org_id"] == org)
    assert value["intended_for"] == {
        "email": row["csdr_email"] or None,
        "name": row["csdr_name"],
    }
    context = value["blocks"][2]["elements"][0]["text"]
    assert who in context and why in context


def test_fallback_channel_is_an_option() -> None:
    options = RenderOptions(fallback_channel="#ops-catchall")
    value = only_alert(run(record(event(org_id="org-2"), key=b"org-2"), options=options))
    assert value["channel_id"] == "#ops-catchall"


def test_routed_alert_has_no_intended_for() -> None:
    assert "intended_for" not in only_alert(run(record(event())))


def test_missing_account_name_is_shown_as_dash() -> None:
    value = only_alert(run(record(event(org_id="org-4"), key=b"org-4")))
    assert value["blocks"][1]["fields"][0]["text"] == "*Organization*\n— (`org-4`)"


# -- console button -----------------------------------------------------------------------------


def test_console_button_only_when_configured_and_url_encoded() -> None:
    options = RenderOptions(console_url_template=CONSOLE)
    value = only_alert(
        run(record(event(env_id="env#a/b?c=d&e", connector_id="lcc é")), options=options)
    )
    actions = value["blocks"][-1]
    assert actions["type"] == "actions"
    button = actions["elements"][0]
    assert button["type"] == "button"
    assert button["url"] == (
        f"https://console.example/org-1/{quote('env#a/b?c=d&e', safe='')}"
        f"/connectors/{quote('lcc é', safe='')}"
    )
    assert (
        button["url"]
        == "https://console.example/org-1/env%23a%2Fb%3Fc%3Dd%26e/connectors/lcc%20%C3%A9"
    )
    assert Block.parse(actions).to_dict() == actions


def test_no_console_button_without_template() -> None:
    value = only_alert(run(record(event())))
    assert all(block["type"] != "actions" for block in value["blocks"])


def test_console_button_dropped_when_url_too_long() -> None:
    # (a long name: ids that long make an alert id the ledger cannot hold, a dead letter)
    options = RenderOptions(console_url_template=CONSOLE + "?name={connector_name}")
    value = only_alert(run(record(event(connector_name="x" * 3000)), options=options))
    assert all(block["type"] != "actions" for block in value["blocks"])


@pytest.mark.parametrize(
    "template", ["https://x/{org}", "https://x/{org_id!r}", "https://x/{}", "https://x/{org_id"]
)
def test_bad_console_template_fails_the_batch(template: str) -> None:
    with pytest.raises(ValueError):
        enrich_batch(
            CONNECTOR_FAILURE,
            [record(event())],
            tables(),
            RenderOptions(console_url_template=template),
        )


# -- escaping and limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nasty",
    [
        "<!channel>",
        "<!here>",
        "<@U123>",
        "<https://evil|click>",
        "<script>alert(1)</script>",
        "a&b",
    ],
)
def test_event_text_cannot_ping_or_link(nasty: str) -> None:
    value = only_alert(
        run(
            record(
                event(connector_name=nasty, connector_new_status=nasty, env_id=nasty),
                key=b"org-1",
            )
        )
    )
    text = flat_text(value["blocks"])
    assert nasty not in text
    assert escape(nasty) in text
    # the only raw "<...>" tokens are ours: the assignee mention and the date
    assert re.findall(r"<[^>]*>", text) == [
        "<!date^1714566896^{date_short_pretty} at {time}|2024-05-01T12:34:56.789000Z>",
        "<@U0JANE>",
    ]


def test_text_fallback_is_escaped() -> None:
    org = "<!channel>&"
    lookups = tables()
    lookups[ASSIGNMENTS].upsert(org, {**ASSIGNMENT_ROWS[0], "org_id": org})
    result = enrich_batch(
        CONNECTOR_FAILURE, [record(event(org_id=org), key=org.encode())], lookups, now=NOW
    )
    value = only_alert(result)
    assert value["text"] == "Connector Failure for Org &lt;!channel&gt;&amp;!"
    assert value["alert_id"] == "<!channel>&-env-a-lcc-1-connector-failure"  # an id, not text


@pytest.mark.parametrize(
    "name",
    ["مرحبا بالعالم", "שלום \u202eevil\u202c", "コネクタ 🚀 👩‍👩‍👧", 'q"uote \\ back\nslash'],
)
def test_unicode_and_rtl_text_is_kept_controls_neutralised(name: str) -> None:
    value = only_alert(run(record(event(connector_name=name))))
    # bidi controls neutralised; in the plain_text header a newline is a space
    header, shown = neutralise(name, multiline=False), neutralise(name)
    assert value["blocks"][0]["text"]["text"] == f"Connector failure: {header}"
    assert value["blocks"][1]["fields"][2]["text"] == f"*Connector*\n{shown} (`lcc-1`)"


def test_huge_event_text_is_cut_to_block_kit_limits() -> None:
    name = "&<>" * 3000
    value = only_alert(run(record(event(connector_name=name, connector_new_status="N" * 5000))))
    blocks = value["blocks"]
    assert len(blocks[0]["text"]["text"]) <= HEADER_TEXT_MAX
    assert len(blocks[1]["text"]["text"]) <= SECTION_TEXT_MAX
    for field in blocks[1]["fields"]:
        assert len(field["text"]) <= SECTION_FIELD_MAX
    for text in (
        blocks[0]["text"]["text"],
        blocks[1]["text"]["text"],
        blocks[1]["fields"][2]["text"],
    ):
        assert ELLIPSIS in text
        assert not re.search(r"&(?!amp;|lt;|gt;)", text)
    assert [Block.parse(b).to_dict() for b in blocks] == blocks  # slack_sdk validates limits


# -- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        ("2024-05-01T12:34:56Z", "2024-05-01T12:34:56Z"),
        ("2024-05-01T12:34:56.5Z", "2024-05-01T12:34:56.500000Z"),
        ("2024-05-01T12:34:56.123456789Z", "2024-05-01T12:34:56.123456Z"),
        ("2024-05-01T14:34:56+02:00", "2024-05-01T12:34:56Z"),
        ("2024-05-01t07:34:56.25-05:00", "2024-05-01T12:34:56.250000Z"),
        ("2024-05-01 12:34:56z", "2024-05-01T12:34:56Z"),
    ],
)
def test_event_time_is_normalised_to_utc(time: str, expected: str) -> None:
    value = only_alert(run(record(event(time=time))))
    assert value["event_time"] == expected
    assert result_event_time(time) == expected


def result_event_time(time: str) -> str:
    return run(record(event(time=time))).alerts[0].event_time


# -- dead letters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "value is null (tombstone)"),
        (b"\xff\xfe{}", "value is not valid UTF-8: "),
        (b"{not json", "value is not valid JSON: "),
        (b"", "value is not valid JSON: "),
        (b"[1, 2]", "value is an array, expected a JSON object"),
        (b'"Provisioning"', "value is a string, expected a JSON object"),
        (b"42", "value is a number, expected a JSON object"),
        (b"null", "value is null, expected a JSON object"),
        (b'{"type": "Provisioning"}', "data missing"),
        (
            b'{"type": "Provisioning", "data": 3}',
            "data is a number, expected an object or a JSON string",
        ),
        (
            b'{"type": "Provisioning", "data": null}',
            "data is null, expected an object or a JSON string",
        ),
        (
            b'{"type": "Provisioning", "data": [1]}',
            "data is an array, expected an object or a JSON string",
        ),
        (
            b'{"data": "{\\"labels\\": {\\"x\\": \\"Provisioning\\""}',
            "data is a string but not valid JSON: ",
        ),
        (
            b'{"data": "[\\"Provisioning\\"]"}',
            "data is a JSON string holding an array, expected an object",
        ),
        (b'{"data": {"note": "Provisioning"}}', "data.labels missing"),
        (b'{"data": {"labels": "Provisioning"}}', "data.labels is a string, expected an object"),
        (
            b'{"data": "{\\"labels\\": [\\"Provisioning\\"]}"}',
            "data.labels is an array, expected an object",
        ),
    ],
)
def test_malformed_values_are_dead_lettered(value: bytes | None, reason: str) -> None:
    got, stage = only_dead_letter(run(record(value)))
    assert got.startswith(reason), got
    assert stage == "parse"


def test_escaped_provisioning_is_still_seen() -> None:
    # "\u0050rovisioning" is "Provisioning": such events are parsed and checked, not skipped
    value = b'{"data": {"labels": {"connector_old_status": "\\u0050rovisioning"}}}'
    reason, stage = only_dead_letter(run(record(value)))
    assert (reason, stage) == ("labels.org_id missing", "validate")
    data_string = orjson.dumps({"data": orjson.dumps({"x": "\\u0050"}).decode()[:-1]})
    reason, _ = only_dead_letter(run(record(data_string)))
    assert reason.startswith("data is a string but not valid JSON")


def test_escaped_provisioning_inside_a_data_string_still_alerts() -> None:
    inner = (
        orjson.dumps({"labels": labels()}).decode().replace("Provisioning", "\\u0050rovisioning")
    )
    assert "Provisioning" not in inner
    value = orjson.dumps({"time": "2024-05-01T12:34:56Z", "data": inner})
    assert only_alert(run(record(value)))["alert_id"] == "org-1-env-a-lcc-1-connector-failure"


@pytest.mark.parametrize(
    "value",
    [
        b'{"type": "heartbeat"}',
        b'{"data": 3}',
        b'{"data": "{broken"}',
        b'{"data": {"labels": 5}}',
        b'{"data": "{\\"labels\\": {\\"connector_old_status\\": \\"Running\\"}"}',
    ],
)
def test_events_that_cannot_be_provisioning_failures_are_only_filtered(value: bytes) -> None:
    result = run(record(value))
    assert result.dead_letters == [] and result.alerts == []
    assert result.counts.filtered_out == 1


@pytest.mark.parametrize("data_as_string", [False, True])
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"org_id": DROP}, "labels.org_id missing"),
        ({"env_id": DROP}, "labels.env_id missing"),
        ({"connector_id": DROP}, "labels.connector_id missing"),
        ({"connector_name": DROP}, "labels.connector_name missing"),
        ({"connector_new_status": DROP}, "labels.connector_new_status missing"),
        ({"env_id": 42}, "labels.env_id is a number, expected a string"),
        ({"connector_id": None}, "labels.connector_id is null, expected a string"),
        ({"connector_name": ["x"]}, "labels.connector_name is an array, expected a string"),
        (
            {"connector_new_status": True},
            "labels.connector_new_status is a boolean, expected a string",
        ),
        ({"org_id": {"a": 1}}, "labels.org_id is an object, expected a string"),
        ({"connector_id": ""}, "labels.connector_id is empty"),
        ({"time": DROP}, "time missing or null"),
        ({"time": None}, "time missing or null"),
        ({"time": 1714566896}, "time is a number, expected an RFC 3339 string"),
        ({"time": "yesterday"}, "time is not an RFC 3339 timestamp: 'yesterday'"),
        ({"time": "2024-05-01T12:34:56"}, "time is not an RFC 3339 timestamp"),
        ({"time": "2024-05-01"}, "time is not an RFC 3339 timestamp"),
        ({"time": "2024-13-01T12:34:56Z"}, "time is not a valid timestamp: '2024-13-01T12:34:56Z'"),
        ({"time": "2024-02-30T12:34:56+01:00"}, "time is not a valid timestamp"),
    ],
)
def test_incomplete_provisioning_failures_are_dead_lettered(
    overrides: dict[str, Any], reason: str, data_as_string: bool
) -> None:
    overrides = dict(overrides)  # parametrize shares the dict between cases
    time = overrides.pop("time", "2024-05-01T12:34:56Z")
    got, stage = only_dead_letter(
        run(record(event(data_as_string=data_as_string, time=time, **overrides)))
    )
    assert got.startswith(reason), got
    assert stage == "validate"


def test_connector_name_may_be_empty() -> None:
    value = only_alert(run(record(event(connector_name=""))))
    assert value["blocks"][0]["text"]["text"] == "Connector failure: —"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "record has no key"),
        (b"\xffbad", "key is not valid UTF-8: "),
        (b"org-2", "record key 'org-2' does not match labels.org_id 'org-1'"),
    ],
)
def test_bad_keys_are_dead_lettered(key: bytes | None, reason: str) -> None:
    got, stage = only_dead_letter(run(record(event(), key=key)))
    assert got.startswith(reason), got
    assert stage == "validate"


def test_batch_continues_after_bad_records() -> None:
    records = [
        record(b"garbage", offset=1),
        record(event(), offset=2),
        record(None, offset=3),
        record(event(connector_old_status="Running"), offset=4),
        record(event(org_id="org-2"), key=b"org-2", offset=5),
        record(event(org_id="nobody"), key=b"nobody", offset=6),
        record(event(env_id=DROP), offset=7),
    ]
    result = run(*records)
    assert [a.source.offset for a in result.alerts] == [2, 5]
    assert [d.record.offset for d in result.dead_letters] == [1, 3, 7]
    assert result.counts.as_dict() == {
        "read": 7,
        "filtered_out": 1,
        "unmatched": 1,
        "routed_to_fallback": 1,
        "dead_lettered": 3,
        "alerts": 2,
    }


def test_dead_letter_message_keeps_original_bytes() -> None:
    value = b'{"data": {"labels": {"connector_old_status": "Provisioning"}}}'
    result = run(record(value, key=b"org-1", offset=99))
    message = encode_dead_letter(result.dead_letters[0])
    assert message.key == b"org-1"
    assert message.value == value
    assert dict(message.headers) == {
        "error": b"labels.org_id missing",
        "error_stage": b"validate",
        "pipeline": b"connector_failure",
        "source_topic": NOTIFICATIONS.encode(),
        "source_partition": b"2",
        "source_offset": b"99",
        "source_timestamp": str(TIMESTAMP_MS).encode(),
    }


def test_tombstone_dead_letter_has_null_value() -> None:
    message = encode_dead_letter(run(record(None)).dead_letters[0])
    assert message.value is None
    assert dict(message.headers)["error"] == b"value is null (tombstone)"


def test_spec_is_declarative() -> None:
    spec = CONNECTOR_FAILURE
    assert spec.name == "connector_failure"
    assert spec.source_topic == NOTIFICATIONS
    assert [(j.table, j.kind, j.as_) for j in spec.joins] == [
        (ASSIGNMENTS, "inner", "assignment"),
        (SLACK_USERS, "left", "slack_user"),
    ]
    assert spec.alert_id == "{org_id}-{env_id}-{connector_id}-connector-failure"
