"""Wire contracts, defined once: the records on the platform's topics
(:mod:`~alert_platform.wire.records`) and the one RFC 3339 codec
(:mod:`~alert_platform.wire.timestamps`). Producers, consumers, ``explain`` and the benchmarks
import them from here; no other module builds these records or parses RFC 3339.

Standard library, msgspec and orjson only: no other ``alert_platform`` module is imported.
"""

from alert_platform.wire.errors import BadRecord
from alert_platform.wire.records import (
    ALERT_ID_MAX,
    REASON_MAX,
    AlertDeadLetterHeaders,
    MessageDeadLetter,
    SlackMessage,
    SlackResponse,
    SourceRef,
    alerts_dlq_headers,
    decode_alert_dead_letter,
    decode_message_dead_letter,
    decode_slack_message,
    decode_slack_response,
    encode_message_dead_letter,
    encode_slack_message,
    encode_slack_message_at,
    encode_slack_response,
    slack_message_value,
    slack_response_value,
    source_value,
)
from alert_platform.wire.timestamps import (
    format_rfc3339,
    kind_of,
    parse_rfc3339,
    parse_rfc3339_utc,
    rfc3339_utc,
)

__all__ = [
    "ALERT_ID_MAX",
    "REASON_MAX",
    "AlertDeadLetterHeaders",
    "BadRecord",
    "MessageDeadLetter",
    "SlackMessage",
    "SlackResponse",
    "SourceRef",
    "alerts_dlq_headers",
    "decode_alert_dead_letter",
    "decode_message_dead_letter",
    "decode_slack_message",
    "decode_slack_response",
    "encode_message_dead_letter",
    "encode_slack_message",
    "encode_slack_message_at",
    "encode_slack_response",
    "format_rfc3339",
    "kind_of",
    "parse_rfc3339",
    "parse_rfc3339_utc",
    "rfc3339_utc",
    "slack_message_value",
    "slack_response_value",
    "source_value",
]
