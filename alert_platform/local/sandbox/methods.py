"""The Slack Web API methods the sandbox implements, with Slack's validation rules and errors."""

from __future__ import annotations

import base64
import bisect
import hmac
import json
import math
from collections.abc import Callable
from typing import Any

from alert_platform.local.sandbox.state import (
    BOT_ID,
    BOT_NAME,
    BOT_USER_ID,
    TEAM_ID,
    TEAM_NAME,
    Channel,
    Message,
    SandboxState,
    ts_to_micros,
)

# (HTTP status, extra headers, JSON body)
ApiResult = tuple[int, dict[str, str], dict[str, Any]]

MAX_TEXT = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTIONS_ELEMENTS = 25
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


def _ok(**fields: Any) -> ApiResult:
    return 200, {}, {"ok": True, **fields}


# -- parameter helpers ---------------------------------------------------------------------


def _str(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    raise SlackError("invalid_arguments", detail=f"{key} must be a string")


def _bool(params: dict[str, Any], key: str) -> bool | None:
    value = params.get(key)
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes")


def _int(params: dict[str, Any], key: str, default: int) -> int:
    value = params.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SlackError("invalid_arguments", detail=f"{key} must be an integer") from None


def _json_value(params: dict[str, Any], key: str, error: str) -> Any:
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


def _ts_param(params: dict[str, Any], key: str, error: str) -> int | None:
    value = _str(params, key)
    if value is None or value == "":
        return None
    try:
        return ts_to_micros(value)
    except ValueError:
        raise SlackError(error) from None


def _encode_cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _decode_cursor_text(cursor: str, prefix: str) -> str:
    try:
        text = base64.b64decode(cursor.encode(), validate=True).decode()
    except ValueError:
        raise SlackError("invalid_cursor") from None
    if not text.startswith(prefix) or len(text) == len(prefix):
        raise SlackError("invalid_cursor")
    return text[len(prefix) :]


def _decode_cursor(cursor: str, prefix: str) -> int:
    try:
        return int(_decode_cursor_text(cursor, prefix))
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
    value = _json_value(params, "metadata", "invalid_metadata_format")
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


class SlackApi:
    """Dispatches ``/api/<method>`` calls against a ``SandboxState``."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.methods: dict[str, Callable[[dict[str, Any]], ApiResult]] = {
            "api.test": self.api_test,
            "auth.test": self.auth_test,
            "chat.postMessage": self.chat_post_message,
            "chat.update": self.chat_update,
            "conversations.list": self.conversations_list,
            "conversations.open": self.conversations_open,
            "conversations.history": self.conversations_history,
            "conversations.replies": self.conversations_replies,
            "users.lookupByEmail": self.users_lookup_by_email,
            "users.list": self.users_list,
        }

    def call(
        self,
        method: str,
        params: dict[str, Any],
        bearer: str | None,
        *,
        body_error: str | None = None,
    ) -> ApiResult:
        """Run one API call; never raises for client mistakes (they become Slack errors)."""
        self.state.count_call(method)
        try:
            handler = self.methods.get(method)
            if handler is None:
                raise SlackError("unknown_method")
            if body_error is not None:
                raise SlackError(body_error)
            if method != "api.test":
                self._authenticate(params, bearer)
            result = handler(params)
        except SlackError as exc:
            result = exc.result()
        body = result[2]
        self.state.count_result(None if body.get("ok") else str(body.get("error")), result[0])
        return result

    def _authenticate(self, params: dict[str, Any], bearer: str | None) -> None:
        token = bearer or params.get("token")
        if not token or not isinstance(token, str):
            raise SlackError("not_authed")
        if not hmac.compare_digest(token.encode(), self.state.token.encode()):
            raise SlackError("invalid_auth")
        if self.state.revoked:
            raise SlackError("token_revoked")

    # -- methods -------------------------------------------------------------------------

    def api_test(self, params: dict[str, Any]) -> ApiResult:
        args = {k: v for k, v in params.items() if k != "token"}
        return _ok(args=args) if args else _ok()

    def auth_test(self, params: dict[str, Any]) -> ApiResult:
        return _ok(
            url="https://alert-platform-sandbox.slack.invalid/",
            team=TEAM_NAME,
            user=BOT_NAME,
            team_id=TEAM_ID,
            user_id=BOT_USER_ID,
            bot_id=BOT_ID,
            is_enterprise_install=False,
        )

    def _message_content(
        self, params: dict[str, Any]
    ) -> tuple[str | None, list[dict[str, Any]] | None, dict[str, Any] | None]:
        blocks = parse_blocks(params.get("blocks"))
        text = _str(params, "text")
        if not text and not blocks and not params.get("attachments"):
            raise SlackError("no_text")
        if text is not None and len(text) > MAX_TEXT:
            raise SlackError("msg_too_long")
        return text, blocks, parse_metadata(params)

    def chat_post_message(self, params: dict[str, Any]) -> ApiResult:
        channel = self.state.find_channel(_str(params, "channel") or "", allow_user=True)
        if channel is None:
            raise SlackError("channel_not_found")
        text, blocks, metadata = self._message_content(params)
        thread_ts = _str(params, "thread_ts") or None
        posted = self.state.post(
            channel,
            text=text or "",
            blocks=blocks,
            metadata=metadata,
            thread_ts=thread_ts,
            reply_broadcast=bool(_bool(params, "reply_broadcast")),
            unfurl_links=_bool(params, "unfurl_links"),
            unfurl_media=_bool(params, "unfurl_media"),
        )
        if isinstance(posted, float):
            retry_after = max(1, math.ceil(posted))
            raise SlackError("ratelimited", status=429, headers={"Retry-After": str(retry_after)})
        with self.state.lock:
            message = posted.to_slack()
        return _ok(channel=channel.id, ts=posted.ts, message=message)

    def chat_update(self, params: dict[str, Any]) -> ApiResult:
        channel = self._conversation(params)
        if channel is None:
            raise SlackError("channel_not_found")
        ts = _str(params, "ts")
        if not ts:
            raise SlackError("message_not_found")
        text, blocks, metadata = self._message_content(params)
        updated = self.state.update(channel.id, ts, text=text, blocks=blocks, metadata=metadata)
        if updated is None:
            raise SlackError("message_not_found")
        with self.state.lock:
            message = updated.to_slack()
        return _ok(channel=channel.id, ts=ts, text=message["text"], message=message)

    def conversations_open(self, params: dict[str, Any]) -> ApiResult:
        raw = params.get("users")
        if isinstance(raw, list):
            users = [str(u).strip() for u in raw if str(u).strip()]
        else:
            users = [u.strip() for u in (_str(params, "users") or "").split(",") if u.strip()]
        if not users:
            existing = self._conversation(params)
            if existing is not None and existing.id[0] in "DG" and not existing.name:
                return _ok(no_op=True, already_open=True, channel={"id": existing.id})
            if params.get("channel"):
                raise SlackError("channel_not_found")
            raise SlackError("users_list_not_supplied")
        if len(users) > 8:
            raise SlackError("too_many_users")
        state = self.state
        channel, created = state.open_dm(users[0]) if len(users) == 1 else state.open_mpim(users)
        if channel is None:
            raise SlackError("user_not_found")
        existed = not created
        body: dict[str, Any] = {"id": channel.id}
        if _bool(params, "return_im"):
            body.update(is_im=channel.is_im, is_mpim=channel.is_mpim, user=channel.user)
        return _ok(no_op=existed, already_open=existed, channel=body)

    def _conversation(self, params: dict[str, Any]) -> Channel | None:
        """The conversation named by ``channel`` as its id only (C/G/D...): Slack answers
        ``channel_not_found`` for a ``#name`` or a user id outside ``chat.postMessage``."""
        return self.state.find_channel(
            _str(params, "channel") or "", allow_user=False, allow_name=False
        )

    def conversations_list(self, params: dict[str, Any]) -> ApiResult:
        """Conversations of ``types`` (default ``public_channel``) ordered by id, ``limit``
        per page (default 100, at most 999) with an opaque ``next_cursor`` ("" at the end).

        ``exclude_archived`` is accepted; nothing is archived in the sandbox.
        """
        raw_types = _str(params, "types") or "public_channel"
        types = frozenset(t.strip() for t in raw_types.split(",") if t.strip())
        if not types or not types <= CONVERSATION_TYPES:
            raise SlackError("invalid_types")
        limit = _int(params, "limit", 100)
        limit = 100 if limit <= 0 else min(limit, MAX_LIST_LIMIT)
        cursor = _str(params, "cursor")
        found = self.state.conversations(types)
        start = 0
        if cursor:
            after = _decode_cursor_text(cursor, "channel:")
            start = bisect.bisect_left(found, after, key=lambda c: c.id)
        page = found[start : start + limit]
        rest = found[start + limit :]
        next_cursor = _encode_cursor(f"channel:{rest[0].id}") if rest else ""
        with self.state.lock:
            channels = [c.to_slack() for c in page]
        return _ok(channels=channels, response_metadata={"next_cursor": next_cursor})

    def conversations_history(self, params: dict[str, Any]) -> ApiResult:
        """Newest first within ``(oldest, latest)``; thread replies only via ``.replies``.

        Every message is the app's own, so its ``metadata`` is always included (Slack returns
        the calling app's metadata by default; ``include_all_metadata`` adds other apps').
        """
        channel = self._conversation(params)
        if channel is None:
            raise SlackError("channel_not_found")
        limit = _int(params, "limit", 100)
        limit = 100 if limit <= 0 else min(limit, MAX_HISTORY_LIMIT)
        inclusive = bool(_bool(params, "inclusive"))
        oldest = _ts_param(params, "oldest", "invalid_ts_oldest")
        latest = _ts_param(params, "latest", "invalid_ts_latest")
        low = 0 if oldest is None else oldest + (0 if inclusive else 1)
        high = FAR_FUTURE_MICROS if latest is None else latest + (1 if inclusive else 0)
        cursor = _str(params, "cursor")
        if cursor:
            high = min(high, _decode_cursor(cursor, "next_ts:"))
        messages, has_more = self.history(channel.id, low, high, limit)
        body: dict[str, Any] = {
            "messages": messages,
            "has_more": has_more,
            "pin_count": 0,
            "channel_actions_count": 0,
            "channel_actions_ts": None,
        }
        next_cursor = ""
        if has_more and messages:
            next_cursor = _encode_cursor(f"next_ts:{ts_to_micros(messages[-1]['ts'])}")
        body["response_metadata"] = {"next_cursor": next_cursor}
        return _ok(**body)

    def history(
        self, channel_id: str, low: int, high: int, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` top-level messages with ``low <= micros < high``, newest first."""
        state = self.state
        out: list[dict[str, Any]] = []
        with state.lock:
            messages = state.by_channel.get(channel_id, [])
            # Arrival order is ts order: find the newest candidate, walk back, stop early.
            i = bisect.bisect_left(messages, high, key=_micros) - 1
            while i >= 0 and messages[i].micros >= low and len(out) <= limit:
                message = messages[i]
                if not message.is_reply or message.reply_broadcast:
                    out.append(message.to_slack())
                i -= 1
        return out[:limit], len(out) > limit

    def conversations_replies(self, params: dict[str, Any]) -> ApiResult:
        channel = self._conversation(params)
        if channel is None:
            raise SlackError("channel_not_found")
        ts = _str(params, "ts") or ""
        with self.state.lock:
            parent = self.state.by_key.get((channel.id, ts))
            if parent is None:
                raise SlackError("thread_not_found")
            replies = [self.state.by_key[(channel.id, r)] for r in parent.replies]
            messages = [parent.to_slack(), *(r.to_slack() for r in replies)]
        return _ok(messages=messages, has_more=False, response_metadata={"next_cursor": ""})

    def users_lookup_by_email(self, params: dict[str, Any]) -> ApiResult:
        email = (_str(params, "email") or "").strip()
        if not email:
            raise SlackError("invalid_arguments", detail="email is required")
        user = self.state.users_by_email.get(email.lower())
        if user is None:
            raise SlackError("users_not_found")
        return _ok(user=user.to_slack())

    def users_list(self, params: dict[str, Any]) -> ApiResult:
        with self.state.lock:
            members = [_bot_user(), *(u.to_slack() for u in self.state.users.values())]
        cursor = _str(params, "cursor")
        start = _decode_cursor(cursor, "offset:") if cursor else 0
        limit = _int(params, "limit", 0)
        end = len(members) if limit <= 0 else start + limit
        next_cursor = _encode_cursor(f"offset:{end}") if end < len(members) else ""
        return _ok(
            members=members[start:end],
            cache_ts=0,
            response_metadata={"next_cursor": next_cursor},
        )


def _micros(message: Message) -> int:
    return message.micros


def _bot_user() -> dict[str, Any]:
    return {
        "id": BOT_USER_ID,
        "team_id": TEAM_ID,
        "name": BOT_NAME,
        "real_name": BOT_NAME,
        "deleted": False,
        "is_bot": True,
        "is_app_user": False,
        "profile": {"bot_id": BOT_ID, "real_name": BOT_NAME, "display_name": BOT_NAME},
    }
