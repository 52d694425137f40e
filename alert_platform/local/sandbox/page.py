"""The sandbox web page: accepted messages per conversation, Block Kit rendered readably.

Every piece of message content goes through ``html.escape``; the only markup emitted is the
renderer's own, and links become anchors only for ``http(s)`` URLs.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import Any

from alert_platform.local.sandbox.state import Message, SandboxState

PER_CHANNEL_LIMIT = 100

_CODE = re.compile(r"```(.+?)```|`([^`\n]+)`", re.S)
_TOKEN = re.compile(r"<([^<>\n]*)>")
_STYLES = (
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])"), "b"),
    (re.compile(r"(?<![\w_])_(?=\S)([^_\n]*?\S)_(?![\w_])"), "i"),
    (re.compile(r"(?<![\w~])~(?=\S)([^~\n]*?\S)~(?![\w~])"), "s"),
)
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_SAFE_URL = ("http://", "https://")


@cache
def _template() -> str:
    return (files(__package__) / "page.html").read_text(encoding="utf-8")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _unslack(text: str) -> str:
    """Undo Slack's three control-character escapes (``&lt;``, ``&gt;``, ``&amp;``)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _link(url: str, label: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    attrs = f'href="{_esc(url)}" rel="noopener noreferrer" target="_blank"'
    return f"<a{cls} {attrs}>{_esc(label)}</a>"


def _styled(plain: str) -> str:
    out = _esc(_unslack(plain))
    for pattern, tag in _STYLES:
        out = pattern.sub(rf"<{tag}>\1</{tag}>", out)
    return out


def _token(inner: str, users: Mapping[str, str], channels: Mapping[str, str]) -> str:
    target, _, label = inner.partition("|")
    url = _unslack(target)
    if url.lower().startswith(_SAFE_URL):
        return _link(url, _unslack(label) if label else url)
    if target.startswith("@") and target[1:] in users:
        return f'<span class="mention">@{_esc(users[target[1:]])}</span>'
    if target.startswith("#") and target[1:] in channels:
        return f'<span class="mention">#{_esc(channels[target[1:]])}</span>'
    if target.startswith("!date^"):
        # Slack renders a date token in the reader's time zone; the fallback text stands in.
        shown = _unslack(label) if label else target
        return f'<time title="{_esc(target)}">{_esc(shown)}</time>'
    literal = _esc(_unslack(f"<{inner}>"))
    if target.startswith("!"):
        return f'<span class="mention broadcast" title="Slack would notify people">{literal}</span>'
    return literal


def mrkdwn_to_html(
    text: str,
    users: Mapping[str, str] | None = None,
    channels: Mapping[str, str] | None = None,
) -> str:
    """Render Slack mrkdwn (``*bold*``, ``_italic_``, ``~strike~``, code, links) as safe HTML.

    ``<http(s)://url|label>`` becomes an anchor, ``<@U..>``/``<#C..>`` a mention of a known
    user or channel, ``<!date^...|fallback>`` its fallback text; ``<!channel>``-style
    broadcasts and anything else in angle brackets are shown literally.
    """
    users, channels = users or {}, channels or {}
    parts: list[str] = []
    pos = 0
    for code in _CODE.finditer(text):
        parts.append(_inline(text[pos : code.start()], users, channels))
        if code.group(1) is not None:
            parts.append(f"<pre>{_esc(_unslack(code.group(1)))}</pre>")
        else:
            parts.append(f"<code>{_esc(_unslack(code.group(2)))}</code>")
        pos = code.end()
    parts.append(_inline(text[pos:], users, channels))
    return "".join(parts)


def _inline(text: str, users: Mapping[str, str], channels: Mapping[str, str]) -> str:
    parts: list[str] = []
    pos = 0
    for token in _TOKEN.finditer(text):
        parts.append(_styled(text[pos : token.start()]))
        parts.append(_token(token.group(1), users, channels))
        pos = token.end()
    parts.append(_styled(text[pos:]))
    return "".join(parts)


class _Renderer:
    """Block Kit -> HTML with the workspace's user and channel names for mentions."""

    def __init__(self, users: Mapping[str, str], channels: Mapping[str, str]) -> None:
        self.users = users
        self.channels = channels

    def text(self, obj: Any) -> str:
        if isinstance(obj, dict):
            value = obj.get("text")
            if not isinstance(value, str):
                return ""
            if obj.get("type") == "mrkdwn":
                return mrkdwn_to_html(value, self.users, self.channels)
            return _esc(value)
        return "" if obj is None else _esc(obj)

    def element(self, element: Any) -> str:
        if not isinstance(element, dict):
            return ""
        kind = element.get("type")
        if kind == "button":
            label = self.text(element.get("text")) or "button"
            style = element.get("style")
            css = "button " + style if style in ("primary", "danger") else "button"
            url = element.get("url")
            if isinstance(url, str) and url.lower().startswith(_SAFE_URL):
                return (
                    f'<a class="{css}" href="{_esc(url)}" rel="noopener noreferrer" '
                    f'target="_blank">{label}</a>'
                )
            return f'<span class="{css}">{label}</span>'
        if kind in ("plain_text", "mrkdwn"):
            return f"<span>{self.text(element)}</span>"
        if kind == "image":
            return f'<span class="img">[image: {_esc(element.get("alt_text", ""))}]</span>'
        return f'<span class="b-other">[{_esc(kind)}]</span>'

    def block(self, block: Any) -> str:
        if not isinstance(block, dict):
            return f'<div class="b-other">{_esc(json.dumps(block))}</div>'
        kind = block.get("type")
        if kind == "header":
            return f'<div class="b-header">{self.text(block.get("text"))}</div>'
        if kind == "section":
            out = ['<div class="b-section">']
            if block.get("text") is not None:
                out.append(f'<div class="b-text">{self.text(block.get("text"))}</div>')
            fields = block.get("fields")
            if isinstance(fields, list) and fields:
                cells = "".join(f'<div class="field">{self.text(f)}</div>' for f in fields)
                out.append(f'<div class="fields">{cells}</div>')
            if block.get("accessory") is not None:
                out.append(f"<div>{self.element(block['accessory'])}</div>")
            out.append("</div>")
            return "".join(out)
        if kind == "context":
            elements = block.get("elements") or []
            return f'<div class="b-context">{"".join(map(self.element, elements))}</div>'
        if kind == "actions":
            elements = block.get("elements") or []
            return f'<div class="b-actions">{"".join(map(self.element, elements))}</div>'
        if kind == "divider":
            return '<hr class="b-divider">'
        if kind == "image":
            alt = _esc(block.get("alt_text", ""))
            url = block.get("image_url")
            if isinstance(url, str) and url.lower().startswith(_SAFE_URL):
                return f'<div class="img">[image: {alt}] {_link(url, url)}</div>'
            return f'<div class="img">[image: {alt}]</div>'
        if kind == "rich_text":
            return f'<div class="b-text">{_esc(_rich_text(block))}</div>'
        return f'<div class="b-other">[{_esc(kind)} block]</div>'

    def message(self, message: Message) -> str:
        stamp = datetime.fromtimestamp(message.micros / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")
        meta = [f"{stamp} UTC <code>{_esc(message.ts)}</code>"]
        if message.is_reply:
            meta.append(f'<span class="tag">reply in thread {_esc(message.thread_ts)}</span>')
        if message.replies:
            meta.append(f'<span class="tag">{len(message.replies)} replies</span>')
        if message.edited_ts:
            meta.append('<span class="tag">edited</span>')
        if message.metadata:
            meta.append(f'<span class="tag">{_esc(message.metadata.get("event_type", ""))}</span>')
        body: list[str] = []
        if message.blocks:
            body.extend(self.block(b) for b in message.blocks)
            if message.text:
                text = mrkdwn_to_html(message.text, self.users, self.channels)
                body.append(
                    f'<details><summary>notification text</summary><div class="text">{text}'
                    "</div></details>"
                )
        else:
            text = mrkdwn_to_html(message.text, self.users, self.channels)
            body.append(f'<div class="text">{text}</div>')
        if message.metadata:
            dump = _esc(json.dumps(message.metadata, indent=2, ensure_ascii=False))
            body.append(f"<details><summary>metadata</summary><pre>{dump}</pre></details>")
        head = f'<div class="meta">{" ".join(meta)}</div>'
        return f'<article class="msg">{head}{"".join(body)}</article>'


def _rich_text(node: Any) -> str:
    if isinstance(node, dict):
        if isinstance(node.get("text"), str):
            return node["text"]
        if node.get("type") == "link" and isinstance(node.get("url"), str):
            return node["url"]
        return _rich_text(node.get("elements", []))
    if isinstance(node, list):
        return "".join(_rich_text(n) for n in node)
    return ""


def render_page(state: SandboxState, *, refresh_seconds: int = 2) -> str:
    """The whole page: conversations with the most recent activity first, newest first."""
    with state.lock:
        users = {u.id: u.name for u in state.users.values()}
        channels = {c.id: c.name for c in state.channels.values() if c.name}
        groups = []
        for channel_id, messages in state.by_channel.items():
            if messages:
                recent = list(reversed(messages[-PER_CHANNEL_LIMIT:]))
                groups.append((channel_id, state.channel_label(channel_id), len(messages), recent))
        total = len(state.messages)
        empty = [f"#{n}" for i, n in channels.items() if not state.by_channel.get(i)]
        revoked = state.revoked
        rate = state.limiter.per_second
        burst = state.limiter.burst
    renderer = _Renderer(users, channels)
    groups.sort(key=lambda g: g[3][0].micros, reverse=True)
    sections = []
    for channel_id, label, count, recent in groups:
        shown = f"{count} message" + ("" if count == 1 else "s")
        if count > len(recent):
            shown += f", newest {len(recent)} shown"
        items = "".join(renderer.message(m) for m in recent)
        sections.append(
            f'<section class="channel"><h2>{_esc(label)} <code>{_esc(channel_id)}</code>'
            f'<span class="count">{shown}</span></h2>{items}</section>'
        )
    if empty:
        sections.append(f'<p class="empty">No messages in {_esc(", ".join(empty))}.</p>')
    limit = f"{rate:g}/s per channel, burst {burst}" if rate else "off"
    summary = (
        f"{total} messages in {len(groups)} conversations · rate limit {limit}"
        + (" · TOKEN REVOKED" if revoked else "")
        + (f" · refreshes every {refresh_seconds} s" if refresh_seconds > 0 else "")
    )
    values = {
        "refresh_meta": (
            f'<meta http-equiv="refresh" content="{refresh_seconds}">'
            if refresh_seconds > 0
            else ""
        ),
        "summary": _esc(summary),
        "content": "\n".join(sections),
    }
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), _template())
