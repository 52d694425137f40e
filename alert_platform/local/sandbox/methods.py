"""The Slack Web API methods the sandbox implements, with Slack's validation rules and errors."""

from __future__ import annotations

import bisect
import hmac
import math
from collections.abc import Callable
from typing import Any

from alert_platform.local.sandbox.params import (
    CONVERSATION_TYPES,
    FAR_FUTURE_MICROS,
    MAX_HISTORY_LIMIT,
    MAX_LIST_LIMIT,
    MAX_TEXT,
    ApiResult,
    SlackError,
    bool_param,
    decode_cursor,
    decode_cursor_text,
    encode_cursor,
    int_param,
    ok,
    parse_blocks,
    parse_metadata,
    str_param,
    ts_param,
)
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
        return ok(args=args) if args else ok()

    def auth_test(self, params: dict[str, Any]) -> ApiResult:
        return ok(
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
        text = str_param(params, "text")
        if not text and not blocks and not params.get("attachments"):
            raise SlackError("no_text")
        if text is not None and len(text) > MAX_TEXT:
            raise SlackError("msg_too_long")
        return text, blocks, parse_metadata(params)

    def chat_post_message(self, params: dict[str, Any]) -> ApiResult:
        channel = self.state.find_channel(str_param(params, "channel") or "", allow_user=True)
        if channel is None:
            raise SlackError("channel_not_found")
        text, blocks, metadata = self._message_content(params)
        thread_ts = str_param(params, "thread_ts") or None
        posted = self.state.post(
            channel,
            text=text or "",
            blocks=blocks,
            metadata=metadata,
            thread_ts=thread_ts,
            reply_broadcast=bool(bool_param(params, "reply_broadcast")),
            unfurl_links=bool_param(params, "unfurl_links"),
            unfurl_media=bool_param(params, "unfurl_media"),
        )
        if isinstance(posted, float):
            retry_after = max(1, math.ceil(posted))
            raise SlackError("ratelimited", status=429, headers={"Retry-After": str(retry_after)})
        with self.state.lock:
            message = posted.to_slack()
        return ok(channel=channel.id, ts=posted.ts, message=message)

    def chat_update(self, params: dict[str, Any]) -> ApiResult:
        channel = self._conversation(params)
        if channel is None:
            raise SlackError("channel_not_found")
        ts = str_param(params, "ts")
        if not ts:
            raise SlackError("message_not_found")
        text, blocks, metadata = self._message_content(params)
        updated = self.state.update(channel.id, ts, text=text, blocks=blocks, metadata=metadata)
        if updated is None:
            raise SlackError("message_not_found")
        with self.state.lock:
            message = updated.to_slack()
        return ok(channel=channel.id, ts=ts, text=message["text"], message=message)

    def conversations_open(self, params: dict[str, Any]) -> ApiResult:
        raw = params.get("users")
        if isinstance(raw, list):
            users = [str(u).strip() for u in raw if str(u).strip()]
        else:
            users = [u.strip() for u in (str_param(params, "users") or "").split(",") if u.strip()]
        if not users:
            existing = self._conversation(params)
            if existing is not None and existing.id[0] in "DG" and not existing.name:
                return ok(no_op=True, already_open=True, channel={"id": existing.id})
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
        if bool_param(params, "return_im"):
            body.update(is_im=channel.is_im, is_mpim=channel.is_mpim, user=channel.user)
        return ok(no_op=existed, already_open=existed, channel=body)

    def _conversation(self, params: dict[str, Any]) -> Channel | None:
        """The conversation named by ``channel`` as its id only (C/G/D...): Slack answers
        ``channel_not_found`` for a ``#name`` or a user id outside ``chat.postMessage``."""
        return self.state.find_channel(
            str_param(params, "channel") or "", allow_user=False, allow_name=False
        )

    def conversations_list(self, params: dict[str, Any]) -> ApiResult:
        """Conversations of ``types`` (default ``public_channel``) ordered by id, ``limit``
        per page (default 100, at most 999) with an opaque ``next_cursor`` ("" at the end).

        ``exclude_archived`` is accepted; nothing is archived in the sandbox.
        """
        raw_types = str_param(params, "types") or "public_channel"
        types = frozenset(t.strip() for t in raw_types.split(",") if t.strip())
        if not types or not types <= CONVERSATION_TYPES:
            raise SlackError("invalid_types")
        limit = int_param(params, "limit", 100)
        limit = 100 if limit <= 0 else min(limit, MAX_LIST_LIMIT)
        cursor = str_param(params, "cursor")
        found = self.state.conversations(types)
        start = 0
        if cursor:
            after = decode_cursor_text(cursor, "channel:")
            start = bisect.bisect_left(found, after, key=lambda c: c.id)
        page = found[start : start + limit]
        rest = found[start + limit :]
        next_cursor = encode_cursor(f"channel:{rest[0].id}") if rest else ""
        with self.state.lock:
            channels = [c.to_slack() for c in page]
        return ok(channels=channels, response_metadata={"next_cursor": next_cursor})

    def conversations_history(self, params: dict[str, Any]) -> ApiResult:
        """Newest first within ``(oldest, latest)``; thread replies only via ``.replies``.

        Every message is the app's own, so its ``metadata`` is always included (Slack returns
        the calling app's metadata by default; ``include_all_metadata`` adds other apps').
        """
        channel = self._conversation(params)
        if channel is None:
            raise SlackError("channel_not_found")
        limit = int_param(params, "limit", 100)
        limit = 100 if limit <= 0 else min(limit, MAX_HISTORY_LIMIT)
        inclusive = bool(bool_param(params, "inclusive"))
        oldest = ts_param(params, "oldest", "invalid_ts_oldest")
        latest = ts_param(params, "latest", "invalid_ts_latest")
        low = 0 if oldest is None else oldest + (0 if inclusive else 1)
        high = FAR_FUTURE_MICROS if latest is None else latest + (1 if inclusive else 0)
        cursor = str_param(params, "cursor")
        if cursor:
            high = min(high, decode_cursor(cursor, "next_ts:"))
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
            next_cursor = encode_cursor(f"next_ts:{ts_to_micros(messages[-1]['ts'])}")
        body["response_metadata"] = {"next_cursor": next_cursor}
        return ok(**body)

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
        ts = str_param(params, "ts") or ""
        with self.state.lock:
            parent = self.state.by_key.get((channel.id, ts))
            if parent is None:
                raise SlackError("thread_not_found")
            replies = [self.state.by_key[(channel.id, r)] for r in parent.replies]
            messages = [parent.to_slack(), *(r.to_slack() for r in replies)]
        return ok(messages=messages, has_more=False, response_metadata={"next_cursor": ""})

    def users_lookup_by_email(self, params: dict[str, Any]) -> ApiResult:
        email = (str_param(params, "email") or "").strip()
        if not email:
            raise SlackError("invalid_arguments", detail="email is required")
        user = self.state.users_by_email.get(email.lower())
        if user is None:
            raise SlackError("users_not_found")
        return ok(user=user.to_slack())

    def users_list(self, params: dict[str, Any]) -> ApiResult:
        with self.state.lock:
            members = [_bot_user(), *(u.to_slack() for u in self.state.users.values())]
        cursor = str_param(params, "cursor")
        start = decode_cursor(cursor, "offset:") if cursor else 0
        limit = int_param(params, "limit", 0)
        end = len(members) if limit <= 0 else start + limit
        next_cursor = encode_cursor(f"offset:{end}") if end < len(members) else ""
        return ok(
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
