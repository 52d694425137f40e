"""The one RFC 3339 codec of the platform: every timestamp on a topic is written and read here.

The rule (:func:`parse_rfc3339`): ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)``; ``t``/space for
``T`` and ``z`` for ``Z`` are accepted, fraction digits beyond microseconds are dropped. **An
offset is required**: a time without one (``2024-05-01T12:34:56``), a date alone, the basic
format (``20240501T123456Z``) or minutes without seconds are not RFC 3339 and are refused with a
:class:`~alert_platform.wire.errors.BadRecord` naming the field (``time is not an RFC 3339
timestamp: '2024-05-01T12:34:56'``); nothing is ever guessed to be UTC. A time whose UTC form
falls outside years 1 to 9999 is refused by the UTC readers (``... is out of the supported range
in UTC``).

What we write (:func:`format_rfc3339`) is the canonical UTC form
``2024-05-01T12:34:56Z`` / ``2024-05-01T12:34:56.789000Z`` (years zero-padded, microseconds only
when present). Canonical times compare correctly as text, which the engine's event-time bounds
rely on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from alert_platform.wire.errors import BadRecord

__all__ = [
    "BadRecord",
    "format_rfc3339",
    "kind_of",
    "parse_rfc3339",
    "parse_rfc3339_utc",
    "rfc3339_utc",
]


def kind_of(value: Any) -> str:
    """A JSON value's kind with its article, for reasons: 'an object', 'a number', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def parse_rfc3339(value: Any, what: str = "time") -> datetime:
    """An RFC 3339 timestamp (the module's rule: offset required) as an aware datetime in its
    own offset; anything else is a :class:`BadRecord` naming ``what``."""
    if type(value) is not str:
        if value is None:
            raise BadRecord(f"{what} missing or null")
        raise BadRecord(f"{what} is {kind_of(value)}, expected an RFC 3339 string")
    if _RFC3339.fullmatch(value) is None:
        raise BadRecord(f"{what} is not an RFC 3339 timestamp: {value[:64]!r}")
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise BadRecord(f"{what} is not a valid timestamp: {value[:64]!r} ({exc})") from None


def _out_of_range(value: str, what: str) -> BadRecord:
    return BadRecord(f"{what} {value[:64]!r} is out of the supported range in UTC")


def parse_rfc3339_utc(value: Any, what: str = "time") -> datetime:
    """:func:`parse_rfc3339`, converted to UTC (a :class:`BadRecord` when that leaves years 1
    to 9999, e.g. ``9999-12-31T23:00:00-05:00``)."""
    moment = parse_rfc3339(value, what)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise _out_of_range(value, what) from None


def format_rfc3339(moment: datetime) -> str:
    """Canonical UTC form: ``2024-05-01T12:34:56Z`` or ``2024-05-01T12:34:56.789000Z``."""
    # isoformat, not strftime: glibc's %Y does not zero-pad years before 1000 ("1-01-01").
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


_UTC_Z = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?Z", re.ASCII)
_fromisoformat = datetime.fromisoformat
# "YYYY-MM-DDTHH:MM:SS" prefixes of ``...Z`` times seen valid -> their epoch second. Events of
# a batch share their seconds, so most times are done with a slice and a dict lookup.
_SECONDS: dict[str, int] = {}
_SECONDS_MAX = 4096
_MICROS_PER = (0, 100_000, 10_000, 1_000, 100, 10, 1)  # by number of fraction digits (<= 6)
_PADDING = ("", "00000Z", "0000Z", "000Z", "00Z", "0Z", "Z")  # to six digits, and the Z
# Below this epoch second (year 2242), seconds + microseconds / 10**6 as a float never rounds
# up to the next second, so the truncated timestamp is the second itself.
_EXACT_SECONDS = 2**33


def rfc3339_utc(value: Any, what: str = "time") -> tuple[str, int]:
    """``(canonical UTC string, epoch seconds)`` of an RFC 3339 timestamp, as
    :func:`format_rfc3339` of :func:`parse_rfc3339`, with a fast path for ``...Z`` input."""
    if type(value) is str:
        seconds = _SECONDS.get(value[:19])
        if seconds is not None:  # a known valid date and time: the rest must be Z or .digits Z
            rest = value[19:]
            if rest == "Z":
                return value, seconds
            digits = rest[1:-1]
            if rest[:1] == "." and rest[-1:] == "Z" and digits.isdigit() and digits.isascii():
                digits = digits[:6]  # like fromisoformat: further digits are dropped
                if not int(digits):
                    return f"{value[:19]}Z", seconds
                if not 0 <= seconds < _EXACT_SECONDS:
                    # as datetime.timestamp(): microseconds since the epoch / 10**6, truncated
                    micros = int(digits) * _MICROS_PER[len(digits)]
                    seconds = int((seconds * 1_000_000 + micros) / 1_000_000)
                if len(rest) == 8:  # six digits: already canonical
                    return value, seconds
                return value[:20] + digits + _PADDING[len(digits)], seconds
        elif (match := _UTC_Z.fullmatch(value)) is not None:
            try:
                moment = _fromisoformat(value)
            except ValueError:
                pass  # out-of-range field: the general path words the reason
            else:
                if len(_SECONDS) >= _SECONDS_MAX:
                    _SECONDS.clear()
                _SECONDS[value[:19]] = int(moment.replace(microsecond=0).timestamp())
                micros = moment.microsecond
                if micros:
                    return f"{match[1]}T{match[2]}.{micros:06d}Z", int(moment.timestamp())
                return f"{match[1]}T{match[2]}Z", int(moment.timestamp())
    moment = parse_rfc3339(value, what)
    try:
        return format_rfc3339(moment), int(moment.timestamp())
    except (OverflowError, ValueError, OSError):  # e.g. 9999-12-31T23:00:00-05:00 is year 10000
        raise _out_of_range(value, what) from None
