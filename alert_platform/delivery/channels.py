"""Resolve where an alert is addressed (``channel_id``) to a Slack conversation id.

An alert may name its destination as a conversation id (``C…``/``G…``/``D…``), a user id
(``U…``/``W…``: a direct message) or a channel name (``#alerts-unrouted`` or
``alerts-unrouted``). ``chat.postMessage`` accepts all three, but ``conversations.history``,
which the deliverer needs to find an uncertain earlier send, takes only a conversation id.
:class:`ChannelResolver` turns every reference into the id:

* ``C…``/``G…``/``D…`` -> as is (no call);
* ``U…``/``W…`` -> ``conversations.open(users=...)`` -> the DM's ``D…`` id (``im:write``);
* a name -> the name->id map of ``conversations.list`` (``types`` public and private
  channels, every page read once; ``channels:read``, ``groups:read``).

Results are cached for the resolver's life (the deliverer makes one per batch): the whole
name map is fetched at most once, each user is opened once. A reference that cannot be
resolved raises :class:`Unresolvable` (error ``channel_not_found``, Slack's own code in
``detail``), also cached. The resolver makes no retries and follows no cursors of its own: its
``call`` and ``pages`` (the deliverer's) retry transient failures, stop on auth errors and read
every page of a listing (slack-sdk's cursor pagination); they raise :class:`RefusedCall` for a
permanent refusal.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

CHANNEL_NOT_FOUND = "channel_not_found"
# Slack: "Fewer than the requested number of items may be returned ... must be under 1000".
DEFAULT_PAGE_SIZE = 999
DEFAULT_TYPES = "public_channel,private_channel"
# Refusals meaning "no such conversation or user": dead-lettered as channel_not_found.
NOT_FOUND_ERRORS = frozenset({"channel_not_found", "user_not_found", "users_not_found"})

_CONVERSATION_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")

# (method, **params) -> the data of an ok answer; raises RefusedCall for a permanent refusal.
ApiCall = Callable[..., Mapping[str, Any]]
# (method, **params) -> the data of every page of a cursor-paginated method (in order).
ApiPages = Callable[..., Iterable[Mapping[str, Any]]]


def is_conversation_id(ref: str | None) -> bool:
    """``C…``/``G…``/``D…``: usable as is by every conversations method."""
    return ref is not None and _CONVERSATION_ID.match(ref) is not None


def is_user_id(ref: str | None) -> bool:
    """``U…``/``W…``: a member, messaged through their DM."""
    return ref is not None and _USER_ID.match(ref) is not None


class RefusedCall(Exception):
    """Raised by the resolver's ``call`` when Slack refused the call for good (``error``)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class Unresolvable(Exception):
    """``ref`` names no conversation the bot can post to: dead-letter the alert (``error``,
    with Slack's answer in ``detail``) and go on with the rest of the batch."""

    def __init__(self, ref: str, error: str, detail: str) -> None:
        super().__init__(f"{ref}: {detail}")
        self.ref = ref
        self.error = error
        self.detail = detail


# Most user -> DM ids a shared cache keeps (then it starts over).
DM_CACHE_MAX = 100_000


class ChannelResolver:
    """Reference -> conversation id, cached; thread-safe (lanes resolve concurrently)."""

    def __init__(
        self,
        call: ApiCall,
        pages: ApiPages,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        types: str = DEFAULT_TYPES,
        dm_cache: MutableMapping[str, str] | None = None,
    ) -> None:
        """``dm_cache``: user id -> DM id shared beyond this resolver's life (a stream worker's
        batches; a bot's DM with a user keeps its id), filled with every DM opened here."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._call = call
        self._pages = pages
        self.page_size = page_size
        self.types = types
        self._lock = threading.Lock()
        self._resolved: dict[str, str | Unresolvable] = {}
        self._dm_cache = dm_cache
        self._names_lock = threading.Lock()
        self._names: dict[str, str] | None = None
        self._names_error: BaseException | None = None

    def resolve(self, ref: str) -> str:
        """The conversation id for ``ref``; :class:`Unresolvable` when there is none.

        Whatever ``call`` raises besides :class:`RefusedCall` (a stop, transient failures
        that persisted) propagates and is not cached, except for the name map: a failed
        listing is not repeated within this resolver's life (it re-raises the same error).
        """
        ref = ref.strip()
        if is_conversation_id(ref):
            return ref
        with self._lock:
            known = self._resolved.get(ref)
        if known is None:
            known = self._open_dm(ref) if is_user_id(ref) else self._by_name(ref)
            with self._lock:
                self._resolved[ref] = known
        if isinstance(known, Unresolvable):
            raise known
        return known

    # -- users -----------------------------------------------------------------------------

    def _open_dm(self, user: str) -> str | Unresolvable:
        cache = self._dm_cache
        if cache is not None:
            cached = cache.get(user)
            if cached is not None:
                return cached
        try:
            data = self._call("conversations.open", users=user)
        except RefusedCall as exc:
            return _unresolvable(user, exc.error, f"conversations.open: {exc.error}")
        channel_id = (data.get("channel") or {}).get("id")
        if not is_conversation_id(channel_id):
            return Unresolvable(user, CHANNEL_NOT_FOUND, "conversations.open returned no id")
        if cache is not None:
            if len(cache) >= DM_CACHE_MAX:
                cache.clear()  # bounded: a full cache starts over
            cache[user] = str(channel_id)
        return str(channel_id)

    # -- names -----------------------------------------------------------------------------

    def _by_name(self, ref: str) -> str | Unresolvable:
        name = ref.lstrip("#").strip()
        if not name:
            return Unresolvable(ref, CHANNEL_NOT_FOUND, "empty channel name")
        try:
            names = self.name_map()
        except RefusedCall as exc:
            return _unresolvable(ref, exc.error, f"conversations.list: {exc.error}")
        found = names.get(name) or names.get(name.lower())
        if found is None:
            return Unresolvable(ref, CHANNEL_NOT_FOUND, f"no channel named #{name}")
        return found

    def name_map(self) -> dict[str, str]:
        """Every channel name the bot can see -> its id (listed once, then cached)."""
        with self._names_lock:
            if self._names is not None:
                return self._names
            if self._names_error is not None:
                raise self._names_error
            try:
                self._names = self._list_names()
            except BaseException as exc:
                self._names_error = exc
                raise
            return self._names

    def _list_names(self) -> dict[str, str]:
        names: dict[str, str] = {}
        pages = self._pages(
            "conversations.list",
            types=self.types,
            limit=self.page_size,
            # Archived channels stay in the map: posting then says is_archived, which tells
            # the operator more than channel_not_found would.
            exclude_archived=False,
        )
        for data in pages:
            for channel in data.get("channels") or ():
                name, channel_id = channel.get("name"), channel.get("id")
                if name and is_conversation_id(channel_id):
                    names.setdefault(str(name), str(channel_id))
        return names


def _unresolvable(ref: str, error: str, detail: str) -> Unresolvable:
    return Unresolvable(ref, CHANNEL_NOT_FOUND if error in NOT_FOUND_ERRORS else error, detail)
