"""Per-conversation pacing of ``chat.postMessage``: a token bucket per channel.

Slack allows about one message per second per channel (short bursts tolerated) and answers a
429 with ``Retry-After``; :class:`ChannelPacer` keeps each lane under that pace and, after a
429, gives that channel no token until the wait is over. One pacer per Slack endpoint is shared
by the whole process (:func:`shared_pacer`) so back-to-back batches do not burst twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DEFAULT_RATE = 0.95  # messages per second per channel (Slack: ~1)
DEFAULT_BURST = 2  # Slack tolerates short bursts; keep one token of headroom


class TokenBuckets:
    """A token bucket per key (``rate`` tokens/s, ``burst`` capacity) on a caller's clock.

    Two ways to take a token: :meth:`reserve` always takes one (the level may go negative) and
    says how long to wait before using it (a client pacing itself); :meth:`try_take` takes one
    only if it is there (a server refusing a request). Not thread-safe: callers lock.
    """

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)

    def _level(self, key: str, now: float) -> tuple[float, float]:
        """(tokens, as of): refilled up to ``now``, or to a future ``as of`` set by :meth:`block`
        (nothing refills before it)."""
        tokens, as_of = self._buckets.get(key, (float(self.burst), now))
        start = max(now, as_of)
        return min(float(self.burst), tokens + (start - as_of) * self.rate), start

    def reserve(self, key: str, now: float) -> float:
        """Take one token for ``key``; seconds from ``now`` to wait before using it (0 = now)."""
        tokens, start = self._level(key, now)
        tokens -= 1.0
        self._buckets[key] = (tokens, start)
        return (start - now) + max(0.0, -tokens) / self.rate

    def try_take(self, key: str, now: float) -> float:
        """Take one token for ``key`` if one is there (0.0), else seconds until there is one."""
        tokens, start = self._level(key, now)
        if start <= now and tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, start)
            return 0.0
        self._buckets[key] = (tokens, start)
        return (start - now) + max(0.0, 1.0 - tokens) / self.rate

    def block(self, key: str, until: float) -> None:
        """No token for ``key`` before ``until``; then one."""
        self._buckets[key] = (1.0, until)

    def clear(self) -> None:
        self._buckets.clear()


class ChannelPacer:
    """Per-channel token buckets (``rate`` tokens/s, ``burst`` capacity), reservation style:
    :meth:`reserve` takes a token and says how long to wait before using it. Thread-safe;
    share one across batches so back-to-back batches do not burst twice."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("pacing needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets = TokenBuckets(rate, burst)

    def reserve(self, channel: str) -> float:
        """Take one token for ``channel``; seconds to wait before posting (0 = now)."""
        with self._lock:
            return self._buckets.reserve(channel, self._clock())

    def penalize(self, channel: str, seconds: float) -> None:
        """Slack said 429: no token for ``channel`` until ``seconds`` from now."""
        with self._lock:
            self._buckets.block(channel, self._clock() + max(0.0, seconds))


_SHARED_PACERS: dict[tuple[str, float, int], ChannelPacer] = {}
_SHARED_LOCK = threading.Lock()


def shared_pacer(
    base_url: str, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST
) -> ChannelPacer:
    """The process-wide pacer for one Slack endpoint (used when none is passed)."""
    with _SHARED_LOCK:
        key = (base_url, rate, burst)
        if key not in _SHARED_PACERS:
            _SHARED_PACERS[key] = ChannelPacer(rate, burst)
        return _SHARED_PACERS[key]
