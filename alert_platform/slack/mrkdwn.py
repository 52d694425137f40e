"""Make untrusted text safe for Slack text objects and keep it within Block Kit limits.

Slack treats ``&``, ``<`` and ``>`` as control characters in every text object (``mrkdwn``
and ``plain_text``): ``<!channel>`` pings a channel, ``<@U123>`` mentions a user and
``<https://evil|click>`` is a disguised link. :func:`escape` turns exactly those three
characters into HTML entities and changes nothing else, so unicode, RTL text, emoji and
mrkdwn punctuation reach Slack as given.

Limits are counted on the escaped text (what Slack receives). :func:`truncate` cuts escaped
text without splitting an entity (``&amp;`` stays whole or goes whole) or a ``<...>`` token
written by our own code, and marks the cut with an ellipsis.
"""

from __future__ import annotations

ELLIPSIS = "…"

# The longest entity escape() produces is "&amp;": an "&" within the last 4 characters of a
# cut, with no ";" after it, starts an entity the cut would split.
_LONGEST_ENTITY = len("&amp;")


def escape(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` for Slack; every other character is kept as is."""
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    return text


def needs_escape(text: str) -> bool:
    """Whether :func:`escape` would change ``text`` (a cheap check for the common case)."""
    return "&" in text or "<" in text or ">" in text


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
