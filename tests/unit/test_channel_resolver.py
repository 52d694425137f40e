"""ChannelResolver with a scripted ``call``: what it asks Slack, what it caches, what it raises."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from alert_platform.delivery.channels import (
    CHANNEL_NOT_FOUND,
    ChannelResolver,
    RefusedCall,
    Unresolvable,
    is_conversation_id,
    is_user_id,
)

CHANNELS = [("C01", "alerts-ops"), ("C02", "alerts-unrouted"), ("G03", "secret"), ("C04", "x")]


class FakeSlack:
    """conversations.list over CHANNELS (pages of ``limit``), conversations.open for users;
    :meth:`pages` follows the cursors as slack-sdk's iteration over a response does."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = users or {"U0ADA": "D0ADA", "W0GRACE": "D0GRACE"}
        self.calls: Counter[str] = Counter()
        self.list_params: list[dict[str, Any]] = []
        self.fail_list: BaseException | None = None

    def __call__(self, method: str, **params: Any) -> dict[str, Any]:
        self.calls[method] += 1
        if method == "conversations.open":
            user = params["users"]
            if user == "U0DISABLED":
                raise RefusedCall("user_disabled")
            if user not in self.users:
                raise RefusedCall("user_not_found")
            return {"ok": True, "channel": {"id": self.users[user]}}
        assert method == "conversations.list"
        self.list_params.append(params)
        if self.fail_list is not None:
            raise self.fail_list
        start = int(params.get("cursor") or 0)
        end = start + params["limit"]
        page = [{"id": i, "name": n} for i, n in CHANNELS[start:end]]
        cursor = str(end) if end < len(CHANNELS) else ""
        return {"ok": True, "channels": page, "response_metadata": {"next_cursor": cursor}}

    def pages(self, method: str, **params: Any) -> Iterator[dict[str, Any]]:
        data = self(method, **params)
        yield data
        while cursor := data["response_metadata"]["next_cursor"]:
            data = self(method, **{**params, "cursor": cursor})
            yield data


def test_reference_shapes() -> None:
    assert all(is_conversation_id(r) for r in ("C0OPS", "G1SECRET", "D0ADA"))
    assert not any(is_conversation_id(r) for r in ("#alerts", "alerts", "U0ADA", "", None, "c0x"))
    assert is_user_id("U0ADA") and is_user_id("W0GRACE")
    assert not is_user_id("#U0ADA") and not is_user_id("ulrich")


def test_ids_need_no_call_users_are_opened_once_names_listed_once() -> None:
    slack = FakeSlack()
    resolver = ChannelResolver(slack, slack.pages, page_size=3)
    assert resolver.resolve("C0ANYTHING") == "C0ANYTHING"
    assert resolver.resolve("D0ADA") == "D0ADA"
    assert slack.calls == Counter()

    for _ in range(3):
        assert resolver.resolve("U0ADA") == "D0ADA"
        assert resolver.resolve("W0GRACE") == "D0GRACE"
        assert resolver.resolve("#alerts-ops") == "C01"
        assert resolver.resolve("alerts-unrouted") == "C02"
        assert resolver.resolve("#secret") == "G03"
        assert resolver.resolve("#X") == "C04"  # names are lowercase in Slack
    # Two pages of three, read once; one open per user.
    assert slack.calls == Counter({"conversations.list": 2, "conversations.open": 2})
    assert slack.list_params[0]["types"] == "public_channel,private_channel"
    assert slack.list_params[1]["cursor"] == "3"


def test_concurrent_lanes_share_one_listing() -> None:
    slack = FakeSlack()
    resolver = ChannelResolver(slack, slack.pages)
    refs = ["#alerts-ops", "alerts-ops", "#secret", "x", "#alerts-unrouted"] * 8
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(resolver.resolve, refs))
    assert ids[:5] == ["C01", "C01", "G03", "C04", "C02"]
    assert slack.calls == Counter({"conversations.list": 1})


@pytest.mark.parametrize(
    ("ref", "error", "detail"),
    [
        ("U0NOBODY", CHANNEL_NOT_FOUND, "conversations.open: user_not_found"),
        ("U0DISABLED", "user_disabled", "conversations.open: user_disabled"),
        ("#no-such-channel", CHANNEL_NOT_FOUND, "no channel named #no-such-channel"),
        ("no-such-channel", CHANNEL_NOT_FOUND, "no channel named #no-such-channel"),
        ("#", CHANNEL_NOT_FOUND, "empty channel name"),
    ],
)
def test_unresolvable_references_are_reported_and_cached(ref: str, error: str, detail: str) -> None:
    slack = FakeSlack()
    resolver = ChannelResolver(slack, slack.pages)
    for _ in range(2):
        with pytest.raises(Unresolvable) as caught:
            resolver.resolve(ref)
        assert (caught.value.ref, caught.value.error, caught.value.detail) == (ref, error, detail)
    assert sum(slack.calls.values()) <= 1


def test_a_refused_listing_makes_names_unresolvable() -> None:
    slack = FakeSlack()
    slack.fail_list = RefusedCall("channel_not_found")
    resolver = ChannelResolver(slack, slack.pages)
    with pytest.raises(Unresolvable, match=r"conversations\.list: channel_not_found"):
        resolver.resolve("#alerts-ops")
    assert resolver.resolve("U0ADA") == "D0ADA"  # users do not need the listing


def test_a_failed_listing_propagates_and_is_not_repeated() -> None:
    class Outage(Exception):
        pass

    slack = FakeSlack()
    slack.fail_list = Outage("Slack kept failing")
    resolver = ChannelResolver(slack, slack.pages)
    for ref in ("#alerts-ops", "#secret"):
        with pytest.raises(Outage):
            resolver.resolve(ref)
    assert slack.calls == Counter({"conversations.list": 1})


def test_a_shared_dm_cache_opens_each_users_dm_once_across_resolvers() -> None:
    """A stream worker's batches: one resolver each, one conversations.open per user."""
    slack = FakeSlack()
    cache: dict[str, str] = {}
    for _batch in range(3):
        resolver = ChannelResolver(slack, slack.pages, dm_cache=cache)
        assert resolver.resolve("U0ADA") == "D0ADA"
        assert resolver.resolve("W0GRACE") == "D0GRACE"
        with pytest.raises(Unresolvable):
            resolver.resolve("U0NOBODY")  # a refusal is not shared: asked again next batch
    assert slack.calls["conversations.open"] == 2 + 3
    assert cache == {"U0ADA": "D0ADA", "W0GRACE": "D0GRACE"}
