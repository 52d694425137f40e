"""Make untrusted text safe for Slack text objects and keep it within Block Kit limits.

Slack treats ``&``, ``<`` and ``>`` as control characters in every text object (``mrkdwn``
and ``plain_text``): ``<!channel>`` pings a channel, ``<@U123>`` mentions a user and
``<https://evil|click>`` is a disguised link. :func:`escape` turns exactly those three
characters into HTML entities and neutralises invisible control characters
(:func:`neutralise`); unicode, RTL text, emoji and mrkdwn punctuation reach Slack as given.

Neutralised (each replaced by U+FFFD, the replacement character, so a reader sees that
something was there): NUL and every other C0 control but ``\\n`` and ``\\t`` (in single-line
text, e.g. a ``plain_text`` header, those two become a space), DEL, the C1 controls
U+0080-U+009F, and the bidi controls U+061C, U+200E, U+200F, U+202A-U+202E and
U+2066-U+2069 (a U+202E "right-to-left override" could make ``exe.txt`` read ``txt.exe``).

Limits are counted on the escaped text (what Slack receives). :func:`truncate` cuts escaped
text without splitting an entity (``&amp;`` stays whole or goes whole) or a ``<...>`` token
written by our own code, and marks the cut with an ellipsis.
"""

from __future__ import annotations

import re

ELLIPSIS = "…"
REPLACEMENT = "\ufffd"

# The longest entity escape() produces is "&amp;": an "&" within the last 4 characters of a
# cut, with no ";" after it, starts an entity the cut would split.
_LONGEST_ENTITY = len("&amp;")

_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROLS = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
_CONTROLS_SINGLE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")


def _replace(match: re.Match[str]) -> str:
    return " " if match.group() in "\n\t" else REPLACEMENT


def neutralise(text: str, *, multiline: bool = True) -> str:
    """``text`` with control and bidi characters replaced (see the module docstring).

    ``multiline=False`` also turns ``\\n`` and ``\\t`` into spaces. Printable text (the usual
    case, one C-level ``isprintable()`` scan) is returned as is."""
    if text.isprintable():
        return text
    if multiline:
        return _CONTROLS.sub(REPLACEMENT, text)
    return _CONTROLS_SINGLE_LINE.sub(_replace, text)


def escape(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` for Slack and :func:`neutralise` control characters
    (``\\n`` and ``\\t`` are kept); every other character is kept as is."""
    if not text.isprintable():
        text = _CONTROLS.sub(REPLACEMENT, text)
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    return text


def needs_escape(text: str) -> bool:
    """Whether :func:`escape` would change ``text`` (a cheap check for the common case)."""
    if "&" in text or "<" in text or ">" in text:
        return True
    return not text.isprintable() and _CONTROLS.search(text) is not None


def truncate(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    """Cut already-escaped ``text`` to at most ``limit`` characters, ending in ``ellipsis``.

    Text within the limit is returned unchanged. The cut never splits an entity such as
    ``&amp;`` nor an unclosed ``<...>`` token (a mention, date or link our code wrote), and
    trailing whitespace before the ellipsis is dropped.
    """
    if len(text) <= limit:
        return text
    if limit <= len(ellipsis):
        return ellipsis[: max(limit, 0)]
    cut = limit - len(ellipsis)
    head = text[:cut]
    amp = head.rfind("&", max(cut - (_LONGEST_ENTITY - 1), 0))
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    opened = head.rfind("<")
    if opened != -1 and opened > head.rfind(">"):
        head = head[:opened]
    return head.rstrip() + ellipsis


def escape_truncate(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    """:func:`escape` then :func:`truncate`: untrusted text ready for a field of ``limit``."""
    return truncate(escape(text), limit, ellipsis)
