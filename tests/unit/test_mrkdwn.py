"""Slack mrkdwn escaping and escape-safe truncation."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alert_platform.slack.mrkdwn import ELLIPSIS, escape, escape_truncate, truncate

ENTITY = re.compile(r"&(?!amp;|lt;|gt;)")


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("<!channel>", "&lt;!channel&gt;"),
        ("<!here> <!everyone>", "&lt;!here&gt; &lt;!everyone&gt;"),
        ("<@U123>", "&lt;@U123&gt;"),
        ("<#C123|general>", "&lt;#C123|general&gt;"),
        ("<https://evil|click>", "&lt;https://evil|click&gt;"),
        ("Tom & Jerry", "Tom &amp; Jerry"),
        ("<script>alert('x')</script>", "&lt;script&gt;alert('x')&lt;/script&gt;"),
        ("&amp;", "&amp;amp;"),  # raw text is escaped as is, never "half-escaped"
        ("", ""),
    ],
)
def test_escape_control_characters(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped


@pytest.mark.parametrize(
    "text",
    [
        "plain connector-name_1.2",
        "*bold* _it_ ~strike~ `code` quote | pipe \"quotes\" 'single' \\ back",
        "Ünïcödé naïve café ✓ 🚀 👩‍👩‍👧",
        "مرحبا بالعالم",  # Arabic (RTL)
        "שלום evil",  # Hebrew (bidi control characters are neutralised: test_pipeline_text.py)
        "日本語のコネクタ",
        "tab\tnewline\n",
    ],
)
def test_escape_keeps_everything_else(text: str) -> None:
    assert escape(text) == text


def test_truncate_within_limit_is_unchanged() -> None:
    assert truncate("abc", 3) == "abc"
    assert truncate("abc", 10) == "abc"


def test_truncate_cuts_to_limit_with_ellipsis() -> None:
    out = truncate("abcdefghij", 5)
    assert out == "abcd" + ELLIPSIS
    assert len(out) == 5


@pytest.mark.parametrize("cut", range(1, 12))
def test_truncate_never_splits_an_entity(cut: int) -> None:
    text = escape("a&b<c>d&&&")  # a&amp;b&lt;c&gt;d&amp;&amp;&amp;
    out = truncate(text, cut)
    assert len(out) <= cut
    body = out.removesuffix(ELLIPSIS)
    assert not ENTITY.search(body), out
    assert text.startswith(body)


def test_truncate_never_splits_a_token() -> None:
    text = "Assigned to <@U12345678> (Jane)"
    out = truncate(text, 20)
    assert out == "Assigned to" + ELLIPSIS
    assert truncate(text, 25) == "Assigned to <@U12345678>" + ELLIPSIS


def test_truncate_tiny_limits() -> None:
    assert truncate("abcdef", 1) == ELLIPSIS
    assert truncate("abcdef", 0) == ""


def test_escape_truncate() -> None:
    out = escape_truncate("<!channel>" * 100, 50)
    assert len(out) <= 50
    assert "<" not in out and ">" not in out
    assert not ENTITY.search(out.removesuffix(ELLIPSIS))


@given(st.text(alphabet="ab&<> é🚀", max_size=60), st.integers(min_value=1, max_value=70))
def test_truncate_properties(raw: str, limit: int) -> None:
    escaped = escape(raw)
    out = truncate(escaped, limit)
    assert len(out) <= limit
    if len(escaped) <= limit:
        assert out == escaped
    else:
        assert out.endswith(ELLIPSIS)
        body = out.removesuffix(ELLIPSIS)
        assert not ENTITY.search(body)
        assert raw.startswith(unescape(body))
