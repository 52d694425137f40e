"""Block Kit layouts defined once with slack_sdk's models, filled per alert at hot-path speed.

A pipeline describes its message as a *layout*: a function that builds the blocks with
``slack_sdk.models.blocks`` from a mapping of named values. :class:`BlockTemplate` calls it
once with placeholders, lets slack_sdk validate the result (``to_dict()`` checks types and
limits), records where each value lands and which Block Kit limit applies there, and keeps the
layout as pre-encoded JSON. :meth:`BlockTemplate.fill` then only escapes the values, checks
lengths and splices them in; it returns an :class:`orjson.Fragment` that ``orjson.dumps``
embeds verbatim, so a rendered alert never goes through per-record model objects.

For values that fit, ``fill(values)`` decodes to exactly
``[b.to_dict() for b in layout(escaped_values)]`` (a unit test holds the two together).
Values that would overflow a text field are cut (see :func:`alert_platform.slack.mrkdwn.truncate`),
the longest first, so a long connector name never pushes the ids out of a field.

Every value is escaped for Slack unless it is named in ``trusted``: trusted values are built
by our own code (user mentions, ``<!date^...>`` tokens, URLs) and are inserted as they are.
Every value, trusted or not, has its control and bidi characters neutralised
(:func:`alert_platform.slack.mrkdwn.neutralise`; in ``plain_text``, such as a header, ``\\n`` and
``\\t`` become spaces too). With ``value_max`` (pipelines use :data:`VALUE_MAX`), an untrusted
value longer than that is cut to it first, wherever it appears, so a 900 kB name costs a
message no more than a 256-character one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import orjson
from slack_sdk.models.blocks import Block, MarkdownTextObject

from alert_platform.slack.mrkdwn import escape, neutralise, truncate

# Block Kit limits (docs.slack.dev/reference/block-kit), counted in characters: the one place
# they are written (the renderers below and the local Slack sandbox's checks use them).
MAX_BLOCKS = 50
SECTION_FIELDS_MAX = 10  # fields of a section
CONTEXT_ELEMENTS_MAX = 10
ACTIONS_ELEMENTS_MAX = 25
HEADER_TEXT_MAX = 150
SECTION_TEXT_MAX = 3000
SECTION_FIELD_MAX = 2000
CONTEXT_TEXT_MAX = 2000
BUTTON_TEXT_MAX = 75
BUTTON_VALUE_MAX = 2000
URL_MAX = 3000
ID_MAX = 255
TEXT_OBJECT_MAX = 3000
# The top-level ``text`` (notification fallback): Slack cuts at 40,000 (``msg_too_long``),
# recommends <= 4,000; we write at most MESSAGE_TEXT_MAX.
MESSAGE_TEXT_LIMIT = 40_000
MESSAGE_TEXT_MAX = 4000
# The longest value copied from an event or a table into a message (escaped, with the ellipsis).
VALUE_MAX = 256

Layout = Callable[[Mapping[str, str]], Sequence[Block]]

# Shown for an empty or missing value.
EMPTY = "—"

_dumps = orjson.dumps
_MARK = "\x00"
_MARKER = re.compile("\x00([^\x00]+)\x00")
# How an occurrence marker ("\x01<n>\x01") looks once orjson has encoded it.
_OCCURRENCE = re.compile(r"\\u0001(\d+)\\u0001")


def limit_for(trail: Sequence[str]) -> int:
    """The Block Kit length limit of the string at ``trail``.

    ``trail`` alternates object types and keys from the block down to the string, list
    indexes left out: ``("section", "fields", "mrkdwn", "text")``.
    """
    key = trail[-1]
    if key in ("block_id", "action_id"):
        return ID_MAX
    if key in ("url", "image_url"):
        return URL_MAX
    if key in ("value", "alt_text"):
        return BUTTON_VALUE_MAX
    if key == "text" and len(trail) >= 4:
        owner, via = trail[-4], trail[-3]
        if owner == "header":
            return HEADER_TEXT_MAX
        if owner == "section":
            return SECTION_FIELD_MAX if via == "fields" else SECTION_TEXT_MAX
        if owner == "context":
            return CONTEXT_TEXT_MAX
        if owner == "button":
            return BUTTON_TEXT_MAX
    return TEXT_OBJECT_MAX


class _Slot:
    """One string of the layout that holds values: its limit, static length, occurrences."""

    __slots__ = ("limit", "occurrences", "static_len", "trail")

    def __init__(self, trail: tuple[str, ...], limit: int, static_len: int) -> None:
        self.trail = trail
        self.limit = limit
        self.static_len = static_len
        # (occurrence number, index of the value name, trusted?)
        self.occurrences: list[tuple[int, int, bool]] = []


def _water_fill(lengths: Sequence[int], budget: int) -> list[int]:
    """Share ``budget`` among strings of ``lengths``: short ones keep all, long ones share."""
    allocation = [0] * len(lengths)
    left = len(lengths)
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        share = max(budget, 0) // left
        allocation[index] = min(lengths[index], share)
        budget -= allocation[index]
        left -= 1
    return allocation


class BlockTemplate:
    """A Block Kit layout compiled once, filled per record.

    ``layout(values)`` must build the blocks from ``values[name]`` for every name in
    ``names`` and must not branch on the values (build one template per variant instead).
    """

    def __init__(
        self,
        layout: Layout,
        names: Iterable[str],
        *,
        trusted: Iterable[str] = (),
        value_max: int | None = None,
    ) -> None:
        self.names: tuple[str, ...] = tuple(names)
        if value_max is not None and value_max < 1:
            raise ValueError(f"value_max must be at least 1, got {value_max}")
        self.value_max = value_max
        self.trusted: frozenset[str] = frozenset(trusted)
        if unknown := self.trusted - set(self.names):
            raise ValueError(f"trusted names not in names: {sorted(unknown)}")
        self.layout = layout
        blocks = list(layout({name: f"{_MARK}{name}{_MARK}" for name in self.names}))
        if len(blocks) > MAX_BLOCKS:
            raise ValueError(f"at most {MAX_BLOCKS} blocks per message, layout has {len(blocks)}")
        skeleton = [block.to_dict() for block in blocks]  # slack_sdk validates here
        self._slots: list[_Slot] = []
        self._occurrence_names: list[int] = []
        skeleton = self._compile(skeleton, ())
        used = {self.names[i] for i in self._occurrence_names}
        if missing := set(self.names) - used:
            raise ValueError(f"layout never uses {sorted(missing)}")

        # ASCII-only template (non-ASCII as JSON \\u escapes): formatting and encoding stay fast
        encoded = _json_ascii(orjson.dumps(skeleton).decode())
        pieces = _OCCURRENCE.split(encoded)
        order = [int(n) for n in pieces[1::2]]
        # statics at even positions, values go to the odd ones: "".join() is the fill
        self._pieces: list[str | None] = pieces
        for position in range(1, len(pieces), 2):
            pieces[position] = None
        # value index per position in the template, and occurrence number per position
        self._position_names = tuple(self._occurrence_names[n] for n in order)
        self._position_of = {n: position for position, n in enumerate(order)}
        # positions in plain_text objects (headers, button labels): single-line text
        self._single_line = tuple(
            sorted(
                self._position_of[number]
                for slot in self._slots
                if "plain_text" in slot.trail
                for number, _, _ in slot.occurrences
            )
        )
        self._pick = _picker(self._position_names)
        self._escape_at = tuple(i for i, n in enumerate(self.names) if n not in self.trusted)
        self._untrusted = _picker(self._escape_at)
        self._caps = self._value_caps()
        self._min_cap = min(self._caps, default=0)
        # (cap, value index), smallest cap first: only values whose cap lies below the total
        # length of all values can be over their cap
        self._by_cap = tuple(sorted((cap, index) for index, cap in enumerate(self._caps)))
        self._fill_fast = self._compile_filler()

    # -- compile time -------------------------------------------------------------------

    def _compile(self, node: Any, trail: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            kind = node.get("type")
            here = (*trail, kind) if isinstance(kind, str) else trail
            return {key: self._compile(value, (*here, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [self._compile(item, trail) for item in node]
        if isinstance(node, str) and _MARK in node:
            return self._compile_slot(node, trail)
        return node

    def _compile_slot(self, text: str, trail: tuple[str, ...]) -> str:
        parts = _MARKER.split(text)
        literals, names = parts[0::2], parts[1::2]
        slot = _Slot(trail, limit_for(trail), sum(map(len, literals)))
        out = [literals[0]]
        for name, literal in zip(names, literals[1:], strict=True):
            if name not in self.names:
                raise ValueError(f"layout used unknown placeholder {name!r}")
            number = len(self._occurrence_names)
            self._occurrence_names.append(self.names.index(name))
            slot.occurrences.append((number, self.names.index(name), name in self.trusted))
            out.append(f"\x01{number}\x01")
            out.append(literal)
        if slot.static_len >= slot.limit:
            raise ValueError(f"static text at {'.'.join(trail)} already fills its limit")
        self._slots.append(slot)
        return "".join(out)

    def _value_caps(self) -> tuple[int, ...]:
        """Per value, a length under which no slot using it can overflow (fast-path check)."""
        caps = [URL_MAX] * len(self.names)
        for slot in self._slots:
            share = (slot.limit - slot.static_len) // len(slot.occurrences)
            for _, index, _trusted in slot.occurrences:
                caps[index] = min(caps[index], share)
        if self.value_max is not None:
            for index in self._escape_at:
                caps[index] = min(caps[index], self.value_max)
        return tuple(caps)

    # -- per record ------------------------------------------------------------------------

    def fill(self, values: Mapping[str, str]) -> orjson.Fragment:
        """The blocks for ``values`` as pre-encoded JSON (embed it with ``orjson.dumps``)."""
        return self.fill_seq([values[name] for name in self.names])

    def fill_seq(self, vals: list[str]) -> orjson.Fragment:
        """:meth:`fill` with the values given in :attr:`names` order.

        ``vals`` may be modified in place (escaping).
        """
        if len(vals) != len(self.names):
            return self._fill_general(vals)
        return self._fill_fast(*vals)

    def filler(self) -> Callable[..., orjson.Fragment]:
        """The hot path: a function of the values, positional in :attr:`names` order, that
        returns what :meth:`fill_seq` returns (``filler()(*vals) == fill_seq(vals)``).

        Generated once per template: straight-line code for the usual values (nothing to
        escape, every value within its cap, JSON-safe ASCII), one f-string for the JSON text;
        anything else goes the general way.
        """
        return self._fill_fast

    def _compile_filler(self) -> Callable[..., orjson.Fragment]:
        general = self._fill_general
        count = len(self.names)
        if count > 60:  # keep the generated code small: such layouts take the general way
            return lambda *vals: general(list(vals))
        params = [f"v{i}" for i in range(count)]
        listed = "[" + ", ".join(params) + "]"
        every = "(" + "".join(f"{p}, " for p in params) + ")"
        untrusted = "(" + "".join(f"v{i}, " for i in self._escape_at) + ")"
        env: dict[str, Any] = {"_general": general, "_dumps": _dumps, "_Fragment": orjson.Fragment}
        # the same checks, in the same order, as _fill_general (so also the same errors)
        lines = [
            f"def fill({', '.join(params)}):",
            f"    u = ''.join({untrusted})",
            "    if '&' in u or '<' in u or '>' in u:",
            f"        return _general({listed})",
            f"    a = ''.join({every})",
            "    total = len(a)",
        ]
        indent = "    "
        for cap, index in self._by_cap:  # a value can only be over its cap if the total is
            lines += [
                f"{indent}if total > {cap}:",
                f"{indent}    if len(v{index}) > {cap}:",
                f"{indent}        return _general({listed})",
            ]
            indent += "    "
        lines += [  # ASCII orjson leaves as is (no control, quote, backslash) and no DEL
            "    if not (a.isascii() and len(_dumps(a)) == total + 2) or '\\x7f' in a:",
            f"        return _general({listed})",
        ]
        parts = []
        for position, piece in enumerate(self._pieces):
            if position % 2:
                parts.append(f"{{v{self._position_names[position // 2]}}}")
            elif piece:
                env[f"_s{position}"] = piece
                parts.append(f"{{_s{position}}}")
        lines.append(f'    return _Fragment(f"{"".join(parts)}".encode())')
        exec(compile("\n".join(lines) + "\n", "<BlockTemplate.filler>", "exec"), env)
        return env["fill"]

    def _fill_general(self, vals: list[str]) -> orjson.Fragment:
        """:meth:`fill_seq` for any values: neutralises, escapes, cuts to the limits,
        JSON-escapes."""
        controls = not "".join(vals).isprintable()
        if controls:
            vals[:] = [neutralise(val) for val in vals]
        untrusted = "".join(self._untrusted(vals))
        if "&" in untrusted or "<" in untrusted or ">" in untrusted:
            for i in self._escape_at:
                vals[i] = escape(vals[i])
        value_max = self.value_max
        if value_max is not None:
            for i in self._escape_at:
                if len(vals[i]) > value_max:
                    vals[i] = truncate(vals[i], value_max)
        joined = "".join(vals)
        total = len(joined)
        fits = True
        if total > self._min_cap:  # else no value can exceed its cap
            for cap, index in self._by_cap:
                if cap >= total:
                    break  # this value and the rest are shorter than their caps
                if len(vals[index]) > cap:
                    fits = False
                    break
        if fits:
            args = self._pick(vals)
        else:
            args = self._fit(vals)
            joined = "".join(args)  # cuts add an ellipsis
        if controls and self._single_line:
            args = list(args)
            for position in self._single_line:
                if "\n" in args[position] or "\t" in args[position]:
                    args[position] = args[position].replace("\n", " ").replace("\t", " ")
            joined = "".join(args)
        # JSON-safe as is: ASCII that orjson would not escape (no quote, backslash, control)
        if not (joined.isascii() and len(_dumps(joined)) == len(joined) + 2):
            args = tuple(_dumps(arg)[1:-1].decode() for arg in args)
        pieces = self._pieces.copy()
        pieces[1::2] = args
        return orjson.Fragment("".join(pieces).encode())

    def fill_blocks(self, values: Mapping[str, str]) -> list[dict[str, Any]]:
        """:meth:`fill` decoded to plain dicts (tests, previews)."""
        return orjson.loads(orjson.dumps(self.fill(values)))

    def _fit(self, vals: list[str]) -> tuple[str, ...]:
        """Per-position values with every overflowing slot's values cut to fit its limit."""
        args = list(self._pick(vals))
        position_of = self._position_of
        for slot in self._slots:
            lengths = [len(vals[index]) for _, index, _ in slot.occurrences]
            budget = slot.limit - slot.static_len
            if sum(lengths) <= budget:
                continue
            fixed = sum(n for n, (_, _, t) in zip(lengths, slot.occurrences, strict=True) if t)
            shrinkable = [i for i, (_, _, t) in enumerate(slot.occurrences) if not t]
            if fixed <= budget:
                budget -= fixed
            else:  # trusted values alone overflow: cut everything rather than exceed the limit
                shrinkable = list(range(len(slot.occurrences)))
            allocation = _water_fill([lengths[i] for i in shrinkable], budget)
            for i, allowed in zip(shrinkable, allocation, strict=True):
                number, index, _ = slot.occurrences[i]
                args[position_of[number]] = truncate(vals[index], allowed)
        return tuple(args)


# -- small helpers for layouts and values --------------------------------------------------


def mrkdwn(text: str) -> MarkdownTextObject:
    """A ``mrkdwn`` text object with ``verbatim``: no auto-linking of URLs or ``#channel``
    names that appear in event text."""
    return MarkdownTextObject(text=text, verbatim=True)


def display(value: Any) -> str:
    """A value as shown in a message: strings as they are, ``None`` or ``""`` as :data:`EMPTY`,
    anything else ``str()``-ed (escaping and bounding are the template's job)."""
    if type(value) is str:
        return value or EMPTY
    if value is None:
        return EMPTY
    try:
        return str(value) or EMPTY
    except Exception:  # e.g. an int of more than 4,300 digits: show its kind, never fail
        return f"({type(value).__name__} that cannot be shown)"


def date_token(epoch: int, iso: str, token: str = "{date_short_pretty} at {time}") -> str:
    """A Slack date shown in the reader's time zone, with ``iso`` (UTC) as fallback text.

    Built by our code: insert it as a *trusted* template value."""
    return f"<!date^{epoch}^{token}|{iso}>"


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _json_escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _json_ascii(encoded: str) -> str:
    """JSON text with every non-ASCII character written as a ``\\u`` escape (same value)."""
    return encoded if encoded.isascii() else _NON_ASCII.sub(_json_escape_char, encoded)


def _picker(indexes: Sequence[int]) -> Callable[[Sequence[str]], tuple[str, ...]]:
    """``itemgetter`` that always returns a tuple, even for zero or one index."""
    if not indexes:
        return lambda _values: ()
    if len(indexes) == 1:
        only = indexes[0]
        return lambda values: (values[only],)
    return itemgetter(*indexes)
