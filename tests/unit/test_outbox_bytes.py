"""A replayed slack-responses record carries the bytes its first send would have."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alert_platform.delivery.outbox import Outbox
from alert_platform.wire import decode_slack_response, encode_slack_response


def test_replay_is_byte_identical_to_the_first_send(tmp_path: Path) -> None:
    record = {
        "response_id": "r-1",
        "alert_id": "org-Zürich-env-1-lcc-1-connector-failure",
        "outcome": "posted",
        "ok": True,
        "error": None,
        "detail": "Kanal «alerts» 🚨",
    }
    outbox = Outbox(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    try:
        outbox.add(record)
        [row] = outbox.pending(datetime.now(UTC) + timedelta(seconds=1))
    finally:
        outbox.close()
    assert row.value.encode() == encode_slack_response(record)
    assert row.value.isascii()  # the first send's escaping, not raw UTF-8
    assert row.key == record["alert_id"]
    assert decode_slack_response(row.value).alert_id == record["alert_id"]
