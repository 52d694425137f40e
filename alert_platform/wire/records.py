"""The records on the platform's topics, defined once as typed msgspec Structs.

* ``slack-messages`` (key: the alert id): :class:`SlackMessage` with its :class:`SourceRef`.
* ``slack-responses`` (key: the alert id): :class:`SlackResponse`, one per attempt outcome.
* ``slack-messages-dlq`` (key: the alert id, when known): :class:`MessageDeadLetter`.
* ``alerts-dlq``: the source record's own key and value bytes, the why and where as headers
  named after the fields of :class:`AlertDeadLetterHeaders`.

A Struct's field order is the order of the keys on the wire; field names are the JSON keys.
The bytes stay what they have always been, which is why the encoders are not all msgspec's:

* ``slack-messages`` are orjson-encoded (msgspec writes some floats differently, ``1e16`` for
  orjson's ``1e+16``). :func:`slack_message_value` / :func:`encode_slack_message_at` (the
  engine's per-alert path) are generated from :class:`SlackMessage`'s fields when this module
  is imported, so the hot path builds a plain dict literal yet cannot drift from the contract.
* ``slack-responses`` and ``slack-messages-dlq`` are compact, ASCII-escaped JSON
  (``json.dumps(..., separators=(",", ":"))``), as they have been produced.

Decoders are msgspec's typed decoders: they raise ``msgspec.DecodeError`` or
``msgspec.ValidationError`` (both ``ValueError``s) for bytes that do not fit the Struct; readers
that must word a precise reason (``delivery.messages``) fall back to their own checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import orjson
from msgspec import UNSET, UnsetType

__all__ = [
    "ALERT_ID_MAX",
    "REASON_MAX",
    "AlertDeadLetterHeaders",
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
    "slack_message_value",
    "slack_response_value",
    "source_value",
]

# Longest dead-letter reason (and alerts-dlq header text) written.
REASON_MAX = 1000
# The longest alert id (and dedup key) a slack-messages record may carry: the delivery ledger's
# column width.
ALERT_ID_MAX = 512


# -- slack-messages ------------------------------------------------------------------------------


class SourceRef(msgspec.Struct, frozen=True):
    """Where the alert's source event came from (lineage, not used for de-duplication)."""

    topic: str
    partition: int
    offset: int
    timestamp: Any = None  # the source record's timestamp, ms since the epoch


class SlackMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A ``slack-messages`` value. The engine writes every field but ``intended_for`` (only on
    fallback-routed alerts); a reader accepts a record without the optional ones
    (``dedup_key`` then is the ``alert_id``). Times are RFC 3339
    (:mod:`alert_platform.wire.timestamps`)."""

    alert_id: str
    dedup_key: str | None = None
    pipeline: str | None = None
    channel_id: str
    text: str
    blocks: list[dict[str, Any]] | None = None
    source: SourceRef | None = None
    created_at: str | None = None
    event_time: str
    intended_for: Any | UnsetType = UNSET


_INTENDED_FOR = "intended_for"


def _compile(name: str, params: list[str], body: list[str]) -> Callable[..., Any]:
    namespace: dict[str, Any] = {"_dumps": orjson.dumps}
    exec(f"def {name}({', '.join(params)}):\n" + "\n".join(body), namespace)
    return namespace[name]  # type: ignore[no-any-return]


def _literal(fields: tuple[str, ...], values: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{name!r}: {values.get(name, name)}" for name in fields) + "}"


def _generate() -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """``source_value``, ``slack_message_value``, ``encode_slack_message_at`` from the fields
    of :class:`SourceRef` and :class:`SlackMessage` (keys in field order)."""
    source_fields = SourceRef.__struct_fields__
    fields = tuple(f for f in SlackMessage.__struct_fields__ if f != _INTENDED_FOR)
    assert SlackMessage.__struct_fields__[-1] == _INTENDED_FOR  # appended last, when present
    source_literal = _literal(source_fields, {})
    inline = {"source": _literal(source_fields, {"topic": "source_topic"})}
    source_params = ["source_topic", *source_fields[1:]]
    tail = [
        "    if intended_for is not None:",
        f"        value[{_INTENDED_FOR!r}] = intended_for",
    ]
    source_value = _compile(
        "source_value",
        [*source_fields[:-1], f"{source_fields[-1]}=None"],
        [f"    return {source_literal}"],
    )
    value_of = _compile(
        "slack_message_value",
        [*fields, "intended_for=None"],
        [f"    value = {_literal(fields, {})}", *tail, "    return value"],
    )
    at = [p for f in fields for p in (source_params if f == "source" else [f])]
    encode_at = _compile(
        "encode_slack_message_at",
        [*at, "intended_for=None"],
        [f"    value = {_literal(fields, inline)}", *tail, "    return _dumps(value)"],
    )
    return source_value, value_of, encode_at


_source_value, _slack_message_value, _encode_slack_message_at = _generate()


def source_value(topic: str, partition: int, offset: int, timestamp: Any = None) -> dict[str, Any]:
    """The ``source`` object of a ``slack-messages`` value."""
    return _source_value(topic, partition, offset, timestamp)  # type: ignore[no-any-return]


def slack_message_value(
    alert_id: str,
    dedup_key: str | None,
    pipeline: str | None,
    channel_id: str,
    text: str,
    blocks: list[dict[str, Any]] | None,
    source: dict[str, Any] | None,
    created_at: str | None,
    event_time: str,
    intended_for: Any = None,
) -> dict[str, Any]:
    """A ``slack-messages`` value as a dict, keys in :class:`SlackMessage`'s order
    (``intended_for`` only when not ``None``)."""
    return _slack_message_value(  # type: ignore[no-any-return]
        alert_id, dedup_key, pipeline, channel_id, text, blocks, source, created_at, event_time,
        intended_for,
    )  # fmt: skip


#: ``encode_slack_message_at(alert_id, dedup_key, pipeline, channel_id, text, blocks,
#: source_topic, partition, offset, timestamp, created_at, event_time, intended_for=None)``:
#: the encoded ``slack-messages`` value with the source given by its parts (the engine's
#: per-alert path: one dict literal and one ``orjson.dumps``). Raises what orjson raises for a
#: value it cannot encode (a lone surrogate, an integer beyond 64 bits, ...).
encode_slack_message_at: Callable[..., bytes] = _encode_slack_message_at


def encode_slack_message(message: SlackMessage) -> bytes:
    """The wire bytes of ``message`` (as the engine writes them)."""
    return orjson.dumps(msgspec.to_builtins(message))


_slack_message_decoder = msgspec.json.Decoder(SlackMessage)


def decode_slack_message(raw: bytes | str) -> SlackMessage:
    """A ``slack-messages`` value; ``msgspec.DecodeError`` / ``ValidationError`` when the bytes
    are not one (the typed part only: non-empty ids, ranges and times are the reader's)."""
    return _slack_message_decoder.decode(raw)


# -- slack-responses -----------------------------------------------------------------------------


class SlackResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A ``slack-responses`` value: one attempt outcome (see
    :mod:`alert_platform.delivery.responses`). Times are RFC 3339 or ``None``."""

    response_id: str  # 32 hex digits, stable: the same outcome written again has the same id
    outcome: str  # ok | retry | failed | stale | duplicate
    alert_id: str
    dedup_key: str | None = None
    event_time: str | None = None
    ok: bool
    channel: str | None = None
    ts: str | None = None
    error: str | None = None
    attempts: int = 0
    slack_date: str | None = None  # Slack's HTTP Date header
    delivered_at: str | None = None


def slack_response_value(response: SlackResponse) -> dict[str, Any]:
    """The record as a dict, keys in field order (what the outbox stores)."""
    return msgspec.structs.asdict(response)


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode_slack_response(response: SlackResponse | Mapping[str, Any]) -> bytes:
    """Compact JSON of the record (a Struct, or its dict from :func:`slack_response_value`)."""
    if isinstance(response, SlackResponse):
        response = slack_response_value(response)
    return _compact_json(dict(response))


_slack_response_decoder = msgspec.json.Decoder(SlackResponse)


def decode_slack_response(raw: bytes | str) -> SlackResponse:
    """A ``slack-responses`` value (``msgspec`` errors when the bytes are not one)."""
    return _slack_response_decoder.decode(raw)


# -- dead letters --------------------------------------------------------------------------------


class MessageDeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A ``slack-messages-dlq`` value: an alert delivery will not post as it is."""

    alert_id: str | None
    error: str  # a Slack error code, or ours (``unparseable_message``, ...)
    detail: str = ""
    attempts: int = 0
    channel: str | None = None
    position: str  # the slack-messages record's topic:partition:offset ("" when built in code)
    failed_at: str  # RFC 3339
    message: Any = None  # the original value: decoded when JSON, else its text, None if absent


def encode_message_dead_letter(letter: MessageDeadLetter, raw: bytes | None = None) -> bytes:
    """Compact JSON of ``letter``; when its decoded ``message`` cannot be encoded (nested too
    deep, ...), the original ``raw`` bytes as text instead. Never raises for ``message``."""
    body = msgspec.structs.asdict(letter)
    try:
        return _compact_json(body)
    except (RecursionError, ValueError, TypeError):
        body["message"] = None if raw is None else raw.decode("utf-8", errors="replace")
        return _compact_json(body)


_message_dead_letter_decoder = msgspec.json.Decoder(MessageDeadLetter)


def decode_message_dead_letter(raw: bytes | str) -> MessageDeadLetter:
    """A ``slack-messages-dlq`` value (``msgspec`` errors when the bytes are not one)."""
    return _message_dead_letter_decoder.decode(raw)


class AlertDeadLetterHeaders(msgspec.Struct, frozen=True):
    """The headers of an ``alerts-dlq`` record (its key and value are the source record's):
    header names are these field names, in this order; values are UTF-8 text."""

    error: Any  # the reason
    error_stage: Any  # parse | filter | validate | join | render
    pipeline: Any
    source_topic: Any
    source_partition: Any
    source_offset: Any
    source_timestamp: Any  # ms since the epoch


_ALERT_DLQ_HEADERS = AlertDeadLetterHeaders.__struct_fields__


def _header(value: Any) -> bytes:
    try:
        text = value if type(value) is str else str(value)
    except Exception:
        text = f"({type(value).__name__})"
    if len(text) > REASON_MAX:
        text = text[: REASON_MAX - 1] + "…"
    return text.encode("utf-8", "replace")


def alerts_dlq_headers(headers: AlertDeadLetterHeaders) -> list[tuple[str, bytes]]:
    """The Kafka headers: each value as text (odd values by their kind), at most
    :data:`REASON_MAX` characters, UTF-8 with replacement. Never raises."""
    return [(name, _header(getattr(headers, name))) for name in _ALERT_DLQ_HEADERS]


def decode_alert_dead_letter(
    headers: list[tuple[str, bytes | None]] | None,
) -> AlertDeadLetterHeaders:
    """The headers of an ``alerts-dlq`` record as text (``None`` for a missing one)."""
    found = {name: value for name, value in headers or () if name in _ALERT_DLQ_HEADERS}
    return AlertDeadLetterHeaders(
        *(
            None if found.get(name) is None else bytes(found[name]).decode("utf-8", "replace")  # type: ignore[arg-type]
            for name in _ALERT_DLQ_HEADERS
        )
    )
