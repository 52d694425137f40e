"""One token bucket for the deliverer's pacing and the sandbox's rate limit."""

import pytest

from alert_platform.delivery.pacing import ChannelPacer, TokenBuckets
from alert_platform.local.sandbox.state import RateLimiter


def test_try_take_refuses_without_spending_and_refills() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2)
    assert buckets.try_take("C1", 0.0) == 0.0
    assert buckets.try_take("C1", 0.0) == 0.0
    assert buckets.try_take("C1", 0.0) == pytest.approx(1.0)  # empty: one second to the next
    assert buckets.try_take("C1", 0.5) == pytest.approx(0.5)  # a refusal spends nothing
    assert buckets.try_take("C1", 1.0) == 0.0
    assert buckets.try_take("C2", 1.0) == 0.0  # keys are independent


def test_reserve_goes_into_debt_and_says_how_long_to_wait() -> None:
    buckets = TokenBuckets(rate=2.0, burst=1)
    assert buckets.reserve("C1", 0.0) == 0.0
    assert buckets.reserve("C1", 0.0) == pytest.approx(0.5)
    assert buckets.reserve("C1", 0.0) == pytest.approx(1.0)  # two tokens owed
    assert buckets.try_take("C1", 0.9) == pytest.approx(0.1 + 0.5)


def test_block_gives_no_token_before_the_deadline_then_one() -> None:
    buckets = TokenBuckets(rate=1.0, burst=3)
    buckets.block("C1", 10.0)
    assert buckets.try_take("C1", 4.0) == pytest.approx(6.0)
    assert buckets.try_take("C1", 10.0) == 0.0
    assert buckets.try_take("C1", 10.0) == pytest.approx(1.0)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBuckets(rate=1, burst=0)


def test_pacer_and_sandbox_share_the_arithmetic() -> None:
    now = [100.0]
    pacer = ChannelPacer(rate=1.0, burst=2, clock=lambda: now[0])
    limiter = RateLimiter(per_second=1.0, burst=2)
    waits = [pacer.reserve("C1") for _ in range(3)]
    assert waits == [0.0, 0.0, pytest.approx(1.0)]
    assert [limiter.acquire("C1", 100.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    pacer.penalize("C1", 30.0)
    assert pacer.reserve("C1") == pytest.approx(30.0)


def test_sandbox_limiter_off_and_reconfigured() -> None:
    limiter = RateLimiter(per_second=None, burst=1)
    assert all(limiter.acquire("C1", 0.0) == 0.0 for _ in range(100))
    limiter.configure(1.0, 1)
    assert limiter.acquire("C1", 0.0) == 0.0
    assert limiter.acquire("C1", 0.0) == pytest.approx(1.0)
    limiter.clear()
    assert limiter.acquire("C1", 0.0) == 0.0
