"""BlockTemplate: compiled once from slack_sdk models, filled fast, never drifting from them."""

from __future__ import annotations

import re
from collections.abc import Mapping

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from alert_platform.pipelines.connector_failure import _NAMES, _TRUSTED, layout
from alert_platform.slack.blocks import (
    BUTTON_TEXT_MAX,
    CONTEXT_TEXT_MAX,
    HEADER_TEXT_MAX,
    SECTION_FIELD_MAX,
    SECTION_TEXT_MAX,
    URL_MAX,
    BlockTemplate,
    limit_for,
)
from alert_platform.slack.mrkdwn import ELLIPSIS, escape, neutralise

BROKEN_ENTITY = re.compile(r"&(?!amp;|lt;|gt;)")


def reference(
    layout_fn, values: Mapping[str, str], trusted: tuple[str, ...] = ()
) -> list[dict[str, object]]:
    """What slack_sdk's models produce for the same values (escaped and neutralised like the
    template does: in plain_text objects, newlines and tabs become spaces)."""
    escaped = {k: neutralise(v) if k in trusted else escape(v) for k, v in values.items()}
    return [_single_line(block.to_dict()) for block in layout_fn(escaped)]


def _single_line(node: object) -> object:
    if isinstance(node, dict):
        if node.get("type") == "plain_text" and isinstance(node.get("text"), str):
            return {**node, "text": node["text"].replace("\n", " ").replace("\t", " ")}
        return {key: _single_line(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_single_line(item) for item in node]
    return node


def roundtrip_through_sdk(blocks: list[dict[str, object]]) -> list[dict[str, object]]:
    """Parse into slack_sdk models and serialise again: to_dict() validates every limit."""
    return [Block.parse(block).to_dict() for block in blocks]  # type: ignore[union-attr]


CONNECTOR_VALUES = {
    "connector_name": "postgres-cdc-orders",
    "connector_id": "lcc-9x8y7z",
    "org_id": "org-123",
    "env_id": "env-abc",
    "account_name": "Acme Inc.",
    "old_status": "Provisioning",
    "new_status": "Failed",
    "event_time": "<!date^1714566896^{date_short_pretty} at {time}|2024-05-01T12:34:56Z>",
    "assignee": "Assigned to <@U123> (Jane)",
}

ADVERSARIAL = [
    "<!channel>",
    "<@U123>",
    "<https://evil|click>",
    "Tom & Jerry",
    "<script>alert(1)</script>",
    'quotes " and \\ backslash',
    "new\nline\ttab\x00nul",
    "percent %s %d %% {braces} {0}",
    "مرحبا بالعالم \u200f",
    "שלום \u202eevil\u202c",
    "emoji 🚀 👩‍👩‍👧 and ünïcödé",
    "",
]


def connector_templates() -> tuple[BlockTemplate, BlockTemplate]:
    plain = BlockTemplate(layout, _NAMES, trusted=_TRUSTED)
    with_button = BlockTemplate(
        lambda v: layout(v, console_button=True),
        (*_NAMES, "console_url"),
        trusted=(*_TRUSTED, "console_url"),
    )
    return plain, with_button


def test_fast_fill_equals_slack_sdk_models() -> None:
    plain, with_button = connector_templates()
    assert plain.fill_blocks(CONNECTOR_VALUES) == reference(layout, CONNECTOR_VALUES, _TRUSTED)
    values = {**CONNECTOR_VALUES, "console_url": "https://console.example/o/e/c?a=1&b=2"}
    assert with_button.fill_blocks(values) == reference(
        lambda v: layout(v, console_button=True), values, (*_TRUSTED, "console_url")
    )


@pytest.mark.parametrize("nasty", ADVERSARIAL)
@pytest.mark.parametrize("name", ["connector_name", "account_name", "org_id", "new_status"])
def test_fast_fill_equals_models_for_adversarial_text(name: str, nasty: str) -> None:
    plain, _ = connector_templates()
    values = {**CONNECTOR_VALUES, name: nasty}
    assert plain.fill_blocks(values) == reference(layout, values, _TRUSTED)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_NAMES[:7]), st.text(max_size=40)))
def test_fast_fill_equals_models_property(overrides: dict[str, str]) -> None:
    plain, _ = connector_templates()
    values = {**CONNECTOR_VALUES, **overrides}
    assert plain.fill_blocks(values) == reference(layout, values, _TRUSTED)


def test_fill_is_an_orjson_fragment() -> None:
    plain, _ = connector_templates()
    fragment = plain.fill(CONNECTOR_VALUES)
    assert isinstance(fragment, orjson.Fragment)
    encoded = orjson.dumps({"blocks": fragment})
    assert orjson.loads(encoded)["blocks"] == plain.fill_blocks(CONNECTOR_VALUES)


def test_untrusted_values_are_escaped_trusted_are_not() -> None:
    plain, _ = connector_templates()
    values = {**CONNECTOR_VALUES, "connector_name": "<!channel>", "assignee": "<@U1> ok"}
    text = orjson.dumps(plain.fill_blocks(values)).decode()
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert "<@U1> ok" in text


# -- limits -------------------------------------------------------------------------------------


def one_slot_layout(kind: str):
    """A layout with a single placeholder ``x`` at the given kind of string."""

    def build(v: Mapping[str, str]) -> list[Block]:
        if kind == "header":
            return [HeaderBlock(text=PlainTextObject(text=f"Hi {v['x']}"))]
        if kind == "section":
            return [SectionBlock(text=MarkdownTextObject(text=f"*S* {v['x']}"))]
        if kind == "field":
            return [SectionBlock(fields=[MarkdownTextObject(text=f"*F*\n{v['x']}")])]
        if kind == "context":
            return [ContextBlock(elements=[MarkdownTextObject(text=f"c {v['x']}")])]
        if kind == "button":
            return [
                ActionsBlock(
                    elements=[ButtonElement(text=f"Open {v['x']}", url="https://x", action_id="a")]
                )
            ]
        if kind == "url":
            return [ActionsBlock(elements=[ButtonElement(text="Open", url=v["x"], action_id="a")])]
        raise AssertionError(kind)

    return build


def slot_text(kind: str, blocks: list[dict]) -> str:
    block = blocks[0]
    return {
        "header": lambda: block["text"]["text"],
        "section": lambda: block["text"]["text"],
        "field": lambda: block["fields"][0]["text"],
        "context": lambda: block["elements"][0]["text"],
        "button": lambda: block["elements"][0]["text"]["text"],
        "url": lambda: block["elements"][0]["url"],
    }[kind]()


LIMITS = {
    "header": HEADER_TEXT_MAX,
    "section": SECTION_TEXT_MAX,
    "field": SECTION_FIELD_MAX,
    "context": CONTEXT_TEXT_MAX,
    "button": BUTTON_TEXT_MAX,
    "url": URL_MAX,
}


@pytest.mark.parametrize("kind", LIMITS)
@pytest.mark.parametrize("filler", ["a", "&", "<", "é", "a&"])
@pytest.mark.parametrize("extra", [0, 1, 2, 3, 4, 5, 500])
def test_each_limit_is_kept_without_breaking_escapes(kind: str, filler: str, extra: int) -> None:
    limit = LIMITS[kind]
    template = BlockTemplate(one_slot_layout(kind), ["x"])
    static = len(slot_text(kind, template.fill_blocks({"x": ""})))
    over = limit - static + 1 + extra  # raw characters: one or more beyond the limit
    raw = (filler * over)[:over]
    blocks = template.fill_blocks({"x": raw})
    text = slot_text(kind, blocks)
    assert len(text) <= limit
    assert text.endswith(ELLIPSIS)
    assert not BROKEN_ENTITY.search(text)
    assert len(text) >= limit - 5  # cut close to the limit, at most one entity short
    assert roundtrip_through_sdk(blocks) == blocks  # slack_sdk accepts it


@pytest.mark.parametrize("kind", LIMITS)
def test_text_exactly_at_the_limit_is_not_cut(kind: str) -> None:
    template = BlockTemplate(one_slot_layout(kind), ["x"])
    static = len(slot_text(kind, template.fill_blocks({"x": ""})))
    raw = "b" * (LIMITS[kind] - static)
    text = slot_text(kind, template.fill_blocks({"x": raw}))
    assert len(text) == LIMITS[kind]
    assert not text.endswith(ELLIPSIS)


def test_long_value_is_cut_and_short_neighbours_kept() -> None:
    plain, _ = connector_templates()
    values = {**CONNECTOR_VALUES, "connector_name": "<x>" * 2000}
    blocks = plain.fill_blocks(values)
    header = blocks[0]["text"]["text"]
    assert len(header) <= HEADER_TEXT_MAX and header.endswith(ELLIPSIS)
    connector_field = blocks[1]["fields"][2]["text"]
    assert len(connector_field) <= SECTION_FIELD_MAX
    assert connector_field.endswith("(`lcc-9x8y7z`)")  # the id survives, the name was cut
    assert ELLIPSIS in connector_field
    section = blocks[1]["text"]["text"]
    assert len(section) <= SECTION_TEXT_MAX and "*Acme Inc.*" in section
    for text in (header, connector_field, section):
        assert not BROKEN_ENTITY.search(text)
    assert roundtrip_through_sdk(blocks) == blocks


def test_two_long_values_share_the_budget() -> None:
    plain, _ = connector_templates()
    values = {**CONNECTOR_VALUES, "connector_name": "n" * 5000, "account_name": "a" * 5000}
    section = plain.fill_blocks(values)[1]["text"]["text"]
    assert len(section) == SECTION_TEXT_MAX
    name, account = re.fullmatch(
        r"Connector \*(n+)…\* failed while provisioning for \*(a+)…\*\.", section
    ).groups()
    assert abs(len(name) - len(account)) <= 1


def test_trusted_value_overflowing_alone_is_cut_safely() -> None:
    plain, _ = connector_templates()
    values = {**CONNECTOR_VALUES, "assignee": "<@U1> " + "x" * 5000}
    context = plain.fill_blocks(values)[2]["elements"][0]["text"]
    assert len(context) <= CONTEXT_TEXT_MAX
    assert context.startswith("<@U1> ")


# -- compile-time checks ------------------------------------------------------------------------


def test_layout_is_validated_by_slack_sdk() -> None:
    from slack_sdk.errors import SlackObjectFormationError

    def bad(v: Mapping[str, str]) -> list[Block]:
        return [HeaderBlock(text=PlainTextObject(text="x" * 151 + v["x"]))]

    with pytest.raises(SlackObjectFormationError):
        BlockTemplate(bad, ["x"])


def test_at_most_50_blocks() -> None:
    def many(v: Mapping[str, str]) -> list[Block]:
        return [SectionBlock(text=v["x"])] + [DividerBlock() for _ in range(50)]

    with pytest.raises(ValueError, match="50 blocks"):
        BlockTemplate(many, ["x"])


def test_names_must_be_used_and_trusted_known() -> None:
    def one(v: Mapping[str, str]) -> list[Block]:
        return [SectionBlock(text=v["x"])]

    with pytest.raises(ValueError, match="never uses"):
        BlockTemplate(one, ["x", "y"])
    with pytest.raises(ValueError, match="trusted"):
        BlockTemplate(one, ["x"], trusted=["z"])


def test_static_only_layout() -> None:
    def static(v: Mapping[str, str]) -> list[Block]:
        return [DividerBlock(), SectionBlock(text=MarkdownTextObject(text="hi & bye"))]

    template = BlockTemplate(static, [])
    assert template.fill_blocks({}) == [block.to_dict() for block in static({})]


@pytest.mark.parametrize(
    ("trail", "limit"),
    [
        (("header", "text", "plain_text", "text"), 150),
        (("section", "text", "mrkdwn", "text"), 3000),
        (("section", "fields", "mrkdwn", "text"), 2000),
        (("context", "elements", "mrkdwn", "text"), 2000),
        (("actions", "elements", "button", "text", "plain_text", "text"), 75),
        (("actions", "elements", "button", "url"), 3000),
        (("actions", "elements", "button", "action_id"), 255),
        (("section", "block_id"), 255),
    ],
)
def test_limit_for(trail: tuple[str, ...], limit: int) -> None:
    assert limit_for(trail) == limit
