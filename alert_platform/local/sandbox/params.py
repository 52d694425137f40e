"""Request parameters of the sandbox's Web API methods: Slack's parsing, limits and errors."""

from __future__ import annotations

import base64
import json
from typing import Any

from alert_platform.local.sandbox.state import ts_to_micros
from alert_platform.slack import blocks as block_kit

# (HTTP status, extra headers, JSON body)
ApiResult = tuple[int, dict[str, str], dict[str, Any]]

# Block Kit limits: written once, in alert_platform.slack.blocks.
MAX_TEXT = block_kit.MESSAGE_TEXT_LIMIT
MAX_BLOCKS = block_kit.MAX_BLOCKS
MAX_SECTION_TEXT = block_kit.SECTION_TEXT_MAX  # also a context element's text (a text object)
MAX_FIELDS = block_kit.SECTION_FIELDS_MAX
MAX_FIELD_TEXT = block_kit.SECTION_FIELD_MAX
MAX_HEADER_TEXT = block_kit.HEADER_TEXT_MAX
MAX_CONTEXT_ELEMENTS = block_kit.CONTEXT_ELEMENTS_MAX
MAX_ACTIONS_ELEMENTS = block_kit.ACTIONS_ELEMENTS_MAX
MAX_HISTORY_LIMIT = 999
MAX_LIST_LIMIT = 999  # Slack: "must be an integer under 1000"
CONVERSATION_TYPES = frozenset({"public_channel", "private_channel", "mpim", "im"})
FAR_FUTURE_MICROS = 2**62


class SlackError(Exception):
    """A Slack-shaped failure: ``{"ok": false, "error": error}`` (HTTP 200 unless ``status``)."""

    def __init__(
        self,
        error: str,
        *,
        detail: str | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail
        self.status = status
        self.headers = headers or {}

    def result(self) -> ApiResult:
        body: dict[str, Any] = {"ok": False, "error": self.error}
        if self.detail:
            body["errors"] = [self.detail]
            body["response_metadata"] = {"messages": [f"[ERROR] {self.detail}"]}
        return self.status, self.headers, body


def ok(**fields: Any) -> ApiResult:
    return 200, {}, {"ok": True, **fields}


# -- parameter helpers ---------------------------------------------------------------------


def str_param(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    raise SlackError("invalid_arguments", detail=f"{key} must be a string")


def bool_param(params: dict[str, Any], key: str) -> bool | None:
    value = params.get(key)
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes")


def int_param(params: dict[str, Any], key: str, default: int) -> int:
    value = params.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SlackError("invalid_arguments", detail=f"{key} must be an integer") from None


def json_param(params: dict[str, Any], key: str, error: str) -> Any:
    """A structured parameter that may arrive decoded (JSON body) or as a JSON string (form)."""
    value = params.get(key)
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except ValueError:
            raise SlackError(error, detail=f"{key} is not valid JSON") from None
    return value


def ts_param(params: dict[str, Any], key: str, error: str) -> int | None:
    value = str_param(params, key)
    if value is None or value == "":
        return None
    try:
        return ts_to_micros(value)
    except ValueError:
        raise SlackError(error) from None


def encode_cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def decode_cursor_text(cursor: str, prefix: str) -> str:
    try:
        text = base64.b64decode(cursor.encode(), validate=True).decode()
    except ValueError:
        raise SlackError("invalid_cursor") from None
    if not text.startswith(prefix) or len(text) == len(prefix):
        raise SlackError("invalid_cursor")
    return text[len(prefix) :]


def decode_cursor(cursor: str, prefix: str) -> int:
    try:
        return int(decode_cursor_text(cursor, prefix))
    except ValueError:
        raise SlackError("invalid_cursor") from None


# -- Block Kit validation ------------------------------------------------------------------


def _invalid_blocks(reason: str, pointer: str) -> SlackError:
    return SlackError("invalid_blocks", detail=f"{reason} [json-pointer:{pointer}]")


def _check_text(obj: Any, pointer: str, max_len: int, *, plain_only: bool = False) -> None:
    if not isinstance(obj, dict):
        raise _invalid_blocks("must be a text object", pointer)
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if obj.get("type") not in allowed:
        raise _invalid_blocks(f"type must be one of {', '.join(allowed)}", pointer + "/type")
    text = obj.get("text")
    if not isinstance(text, str):
        raise _invalid_blocks("missing required field: text", pointer)
    if not text:
        raise _invalid_blocks("must be more than 0 characters", pointer + "/text")
    if len(text) > max_len:
        raise _invalid_blocks(f"must be less than {max_len + 1} characters", pointer + "/text")


def _check_elements(block: dict[str, Any], pointer: str, max_items: int) -> list[Any]:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        raise _invalid_blocks("must provide a non-empty elements array", pointer + "/elements")
    if len(elements) > max_items:
        raise _invalid_blocks(f"no more than {max_items} items allowed", pointer + "/elements")
    for i, element in enumerate(elements):
        if not isinstance(element, dict) or not isinstance(element.get("type"), str):
            raise _invalid_blocks("missing required field: type", f"{pointer}/elements/{i}")
    return elements


def _check_block(block: Any, pointer: str) -> None:
    if not isinstance(block, dict):
        raise _invalid_blocks("must be an object", pointer)
    kind = block.get("type")
    if not isinstance(kind, str) or not kind:
        raise _invalid_blocks("missing required field: type", pointer)
    if kind == "section":
        text, fields = block.get("text"), block.get("fields")
        if text is None and not fields:
            raise _invalid_blocks("must provide either text or fields", pointer)
        if text is not None:
            _check_text(text, pointer + "/text", MAX_SECTION_TEXT)
        if fields is not None:
            if not isinstance(fields, list):
                raise _invalid_blocks("must be an array", pointer + "/fields")
            if len(fields) > MAX_FIELDS:
                raise _invalid_blocks(
                    f"no more than {MAX_FIELDS} items allowed", pointer + "/fields"
                )
            for i, item in enumerate(fields):
                _check_text(item, f"{pointer}/fields/{i}", MAX_FIELD_TEXT)
    elif kind == "header":
        _check_text(block.get("text"), pointer + "/text", MAX_HEADER_TEXT, plain_only=True)
    elif kind == "context":
        for i, element in enumerate(_check_elements(block, pointer, MAX_CONTEXT_ELEMENTS)):
            if element["type"] in ("plain_text", "mrkdwn"):
                _check_text(element, f"{pointer}/elements/{i}", MAX_SECTION_TEXT)
    elif kind == "actions":
        _check_elements(block, pointer, MAX_ACTIONS_ELEMENTS)


def parse_blocks(raw: Any) -> list[dict[str, Any]] | None:
    """Blocks as a list (``None`` when absent); ``SlackError("invalid_blocks")`` when invalid.

    Checks what Slack rejects most often: not a JSON array, more than 50 blocks, a block
    without ``type``, section text over 3000, more than 10 fields or one over 2000, a header
    over 150 (plain text only), empty text objects, context over 10 elements.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            raw = json.loads(raw)
        except ValueError:
            raise _invalid_blocks("blocks is not valid JSON", "/blocks") from None
    if not isinstance(raw, list):
        raise _invalid_blocks("must be an array", "/blocks")
    if len(raw) > MAX_BLOCKS:
        raise _invalid_blocks(f"no more than {MAX_BLOCKS} items allowed", "/blocks")
    for i, block in enumerate(raw):
        _check_block(block, f"/blocks/{i}")
    return raw


def parse_metadata(params: dict[str, Any]) -> dict[str, Any] | None:
    """Message metadata ``{"event_type": str, "event_payload": {...}}`` or ``None``."""
    value = json_param(params, "metadata", "invalid_metadata_format")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SlackError("invalid_metadata_format", detail="metadata must be a JSON object")
    if not isinstance(value.get("event_type"), str) or not value["event_type"]:
        raise SlackError("invalid_metadata_schema", detail="metadata.event_type is required")
    if not isinstance(value.get("event_payload"), dict):
        raise SlackError("invalid_metadata_schema", detail="metadata.event_payload is required")
    return value


# -- the API -------------------------------------------------------------------------------
