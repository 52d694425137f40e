"""Typed alert messages as consumed from ``slack-messages``, and the dead letters of delivery.

A ``slack-messages`` value is JSON, defined once in :class:`alert_platform.wire.SlackMessage`::

    {"alert_id", "dedup_key", "pipeline", "channel_id", "text", "blocks",
     "source": {"topic", "partition", "offset", "timestamp"}, "created_at", "event_time"}

Times follow the one RFC 3339 rule of :mod:`alert_platform.wire.timestamps` (an offset is
required: a time without one is dead-lettered, never read as UTC).

``dedup_key`` (``{pipeline}:{hash of the alert-id template's values}``, written by the engine) is
what the ledger de-duplicates on; a value without it uses ``alert_id``.

:func:`parse_message` turns one :class:`~alert_platform.kafka.records.SourceRecord` into an
:class:`OutboundMessage` or raises :class:`InvalidMessage` (a reason; for any bytes, never
another exception: deep nesting, huge numbers, non-UTF-8, dates out of range included);
:func:`parse_records` splits a batch into messages and :class:`DeadLetter` s and never raises.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from alert_platform.kafka.records import SourceRecord
from alert_platform.wire import ALERT_ID_MAX as ALERT_ID_MAX  # re-exported
from alert_platform.wire import (
    BadRecord,
    MessageDeadLetter,
    SourceRef,
    decode_slack_message,
    encode_message_dead_letter,
    parse_rfc3339_utc,
    slack_message_value,
    source_value,
)
from alert_platform.wire import format_rfc3339 as format_rfc3339  # re-exported

# Dead-letter error codes that are ours rather than Slack's.
UNPARSEABLE = "unparseable_message"


class InvalidMessage(ValueError):
    """A ``slack-messages`` record that cannot be delivered as it is; ``str()`` is the reason."""


def parse_rfc3339(value: object, field_name: str) -> datetime:
    """An RFC 3339 timestamp (offset required, :mod:`alert_platform.wire.timestamps`) as an
    aware UTC datetime; :class:`InvalidMessage` naming ``field_name`` otherwise."""
    try:
        return parse_rfc3339_utc(value, field_name)
    except BadRecord as exc:
        raise InvalidMessage(exc.reason) from None


@dataclass(frozen=True)
class SourcePosition:
    """Where the alert's source event came from (lineage, not used for de-duplication)."""

    topic: str
    partition: int
    offset: int
    timestamp: Any = None

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class OutboundMessage:
    """One alert ready for ``chat.postMessage``.

    ``position`` is the ``slack-messages`` record's own ``topic:partition:offset`` (empty when
    built in code); ``dedup_key`` is the ledger's identity (empty: the ``alert_id``); ``raw``
    is the original value (kept for dead letters, not shown in repr).
    """

    alert_id: str
    channel_id: str
    text: str
    event_time: datetime
    pipeline: str = ""
    blocks: list[dict[str, Any]] | None = None
    source: SourcePosition | None = None
    created_at: datetime | None = None
    position: str = ""
    dedup_key: str = ""
    raw: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.dedup_key:
            object.__setattr__(self, "dedup_key", self.alert_id)

    @property
    def source_ref(self) -> str:
        """``topic:partition:offset`` of the source event, else this record's own position."""
        return str(self.source) if self.source is not None else self.position

    def to_value(self) -> dict[str, Any]:
        """The wire form (as on ``slack-messages``: :class:`~alert_platform.wire.SlackMessage`)."""
        source = self.source
        return slack_message_value(
            self.alert_id,
            self.dedup_key,
            self.pipeline,
            self.channel_id,
            self.text,
            self.blocks,
            None
            if source is None
            else source_value(source.topic, source.partition, source.offset, source.timestamp),
            None if self.created_at is None else format_rfc3339(self.created_at),
            format_rfc3339(self.event_time),
        )


def _required_str(value: Mapping[str, Any], name: str) -> str:
    item = value.get(name)
    if not isinstance(item, str) or not item.strip():
        raise InvalidMessage(f"{name} must be a non-empty string, got {str(item)[:100]!r}")
    _encodable(item, name)
    return item


def _encodable(item: str, name: str) -> None:
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage(f"{name} is not valid Unicode (a lone surrogate)") from None


def _source(raw: object) -> SourcePosition | None:
    if raw is None:
        return None
    if isinstance(raw, SourceRef):  # from the typed decoder
        raw = {"topic": raw.topic, "partition": raw.partition, "offset": raw.offset,
               "timestamp": raw.timestamp}  # fmt: skip
    if not isinstance(raw, Mapping):
        raise InvalidMessage(f"source must be an object, got {type(raw).__name__}")
    topic, partition, offset = raw.get("topic"), raw.get("partition"), raw.get("offset")
    if not isinstance(topic, str) or not topic:
        raise InvalidMessage(f"source.topic must be a non-empty string, got {topic!r}")
    for name, number in (("partition", partition), ("offset", offset)):
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 2**63:
            shown = str(number)[:40]
            raise InvalidMessage(
                f"source.{name} must be a 64-bit non-negative integer, got {shown}"
            )
    return SourcePosition(topic, partition, offset, raw.get("timestamp"))  # type: ignore[arg-type]


def message_from_value(
    value: Mapping[str, Any], *, position: str = "", raw: bytes | None = None
) -> OutboundMessage:
    """Validate a decoded ``slack-messages`` value into an :class:`OutboundMessage`."""
    if not isinstance(value, Mapping):
        raise InvalidMessage(f"value must be a JSON object, got {type(value).__name__}")
    alert_id = _required_str(value, "alert_id")
    if len(alert_id) > ALERT_ID_MAX:
        raise InvalidMessage(
            f"alert_id is {len(alert_id)} characters long, more than the ledger's {ALERT_ID_MAX}"
        )
    dedup_key = value.get("dedup_key")
    if dedup_key is not None:
        if not isinstance(dedup_key, str) or not dedup_key.strip():
            raise InvalidMessage(f"dedup_key must be a non-empty string, got {dedup_key!r}")
        if len(dedup_key) > ALERT_ID_MAX:
            raise InvalidMessage(f"dedup_key is longer than the ledger's {ALERT_ID_MAX}")
        _encodable(dedup_key, "dedup_key")
    channel_id = _required_str(value, "channel_id")
    text = value.get("text")
    if not isinstance(text, str):
        raise InvalidMessage(f"text must be a string, got {type(text).__name__}")
    blocks = value.get("blocks")
    if blocks is not None and (
        not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks)
    ):
        raise InvalidMessage("blocks must be a list of objects or null")
    if not text.strip() and not blocks:
        raise InvalidMessage("text is empty and there are no blocks")
    pipeline = value.get("pipeline") or ""
    if not isinstance(pipeline, str):
        raise InvalidMessage(f"pipeline must be a string, got {pipeline!r}")
    created = value.get("created_at")
    return OutboundMessage(
        alert_id=alert_id,
        channel_id=channel_id,
        text=text,
        event_time=parse_rfc3339(value.get("event_time"), "event_time"),
        pipeline=pipeline,
        blocks=blocks or None,
        source=_source(value.get("source")),
        created_at=None if created in (None, "") else parse_rfc3339(created, "created_at"),
        position=position,
        dedup_key=dedup_key or "",
        raw=raw,
    )


def _loads(raw: bytes | str) -> Any:
    """``json.loads``; :class:`InvalidMessage` for anything it cannot read (not JSON, not
    UTF-8, nested too deep, a number too long to convert)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidMessage("value is not JSON we can read: nested too deep") from None
    except (UnicodeDecodeError, ValueError, TypeError, OverflowError) as exc:
        # json.JSONDecodeError, and int-conversion limits, are ValueErrors.
        raise InvalidMessage(f"value is not JSON: {str(exc)[:200]}") from None


def _decoded(raw: bytes) -> Any:
    """The value read with the typed :class:`~alert_platform.wire.SlackMessage` decoder (its
    fields as a mapping), else generically (:func:`_loads`) so that the checks of
    :func:`message_from_value` word why it does not fit."""
    try:
        return msgspec.structs.asdict(decode_slack_message(raw))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return _loads(raw)


def parse_message(record: SourceRecord) -> OutboundMessage:
    """One ``slack-messages`` record as an :class:`OutboundMessage`; :class:`InvalidMessage`
    when it cannot be delivered (empty value, not JSON, missing or mistyped fields)."""
    if record.value is None:
        raise InvalidMessage("record has no value (tombstone)")
    value = _decoded(record.value)
    try:
        return message_from_value(value, position=record.position, raw=record.value)
    except InvalidMessage:
        raise
    except Exception as exc:  # a value no check foresaw: still a reason, never a crash
        reason = f"value cannot be read: {type(exc).__name__}: {str(exc)[:200]}"
        raise InvalidMessage(reason) from None


@dataclass(frozen=True)
class DeadLetter:
    """An alert that will not be delivered as it is: the caller produces it to
    ``slack-messages-dlq`` (value :meth:`dlq_value`, key :attr:`key`)."""

    alert_id: str | None
    position: str
    error: str
    detail: str = ""
    attempts: int = 0
    channel: str | None = None
    raw: bytes | None = field(default=None, repr=False)

    @property
    def key(self) -> bytes | None:
        return self.alert_id.encode("utf-8", errors="replace") if self.alert_id else None

    def dlq_value(self) -> bytes:
        """JSON: the error, where the record was, and the original value (decoded if JSON)."""
        original: Any = None
        if self.raw is not None:
            try:
                original = _loads(self.raw)
            except InvalidMessage:
                original = self.raw.decode("utf-8", errors="replace")
        letter = MessageDeadLetter(
            alert_id=self.alert_id,
            error=self.error,
            detail=self.detail,
            attempts=self.attempts,
            channel=self.channel,
            position=self.position,
            failed_at=format_rfc3339(datetime.now(UTC)),
            message=original,
        )
        return encode_message_dead_letter(letter, self.raw)

    @classmethod
    def for_message(
        cls, message: OutboundMessage, error: str, *, detail: str = "", attempts: int = 0
    ) -> DeadLetter:
        raw = message.raw
        if raw is None:
            try:
                raw = json.dumps(message.to_value(), separators=(",", ":")).encode()
            except (RecursionError, ValueError, TypeError, UnicodeEncodeError):
                raw = None  # a value we cannot encode: the dead letter carries the reason only
        return cls(
            alert_id=message.alert_id,
            position=message.position,
            error=error,
            detail=detail,
            attempts=attempts,
            channel=message.channel_id,
            raw=raw,
        )


@dataclass
class ParsedBatch:
    messages: list[OutboundMessage]
    dead_letters: list[DeadLetter]


def _alert_id_of(raw: bytes | None) -> str | None:
    try:
        value = _loads(raw) if raw is not None else None
    except InvalidMessage:
        return None
    if isinstance(value, dict) and isinstance(value.get("alert_id"), str):
        return value["alert_id"] or None
    return None


def parse_records(records: Iterable[SourceRecord]) -> ParsedBatch:
    """Split ``slack-messages`` records into messages and dead letters (error
    ``unparseable_message``, the reason in ``detail``); never raises for a bad record."""
    batch = ParsedBatch([], [])
    for record in records:
        try:
            batch.messages.append(parse_message(record))
        except Exception as exc:
            batch.dead_letters.append(_unparseable(record, exc))
    return batch


def _unparseable(record: SourceRecord, exc: Exception) -> DeadLetter:
    reason = str(exc) if isinstance(exc, InvalidMessage) else f"{type(exc).__name__}: {exc}"
    raw = record.value if isinstance(record.value, bytes) else None
    try:
        alert_id = _alert_id_of(raw)
        if alert_id is None and record.key:
            alert_id = bytes(record.key).decode("utf-8", errors="replace")
    except Exception:
        alert_id = None
    if alert_id is not None:
        alert_id = alert_id[:ALERT_ID_MAX]
    return DeadLetter(alert_id, str(record.position), UNPARSEABLE, reason[:2000], raw=raw)
