"""The per-user quotas and per-connection counts of `security/limits.py` on a clock the
test sets, where the real-socket tests cannot reach: a bucket exactly at its bound, an
hour's idling, midnight UTC, the ten-thousandth user; and the `retry-after` header
every 429 carries (CONTRACT.md, "Limits and their defaults")."""

from __future__ import annotations

import itertools

import pytest

from tokenwire.core.provider import Message, Usage
from tokenwire.core.spec import RequestSpec
from tokenwire.core.stats import StreamOutcome
from tokenwire.protocol.errors import (
    BudgetExceeded,
    RequestRateLimited,
    TooManyConnections,
    retry_after_header,
)
from tokenwire.protocol.events import StreamStatus
from tokenwire.security import limits
from tokenwire.security.limits import Connections, LimitPolicy, Quotas

DAY = 86_400.0
MIDNIGHT = 20_000 * DAY  # a UTC midnight
REQUEST_IDS = itertools.count()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def spec(user: str = "ada") -> RequestSpec:
    return RequestSpec(
        user_id=user,
        messages=(Message(role="user", content="hi"),),
        request_id=f"r{next(REQUEST_IDS)}",
    )


def ended(
    usage: Usage | None = None,
    cost_usd: float = 0.0,
    status: StreamStatus = StreamStatus.COMPLETED,
) -> StreamOutcome:
    return StreamOutcome(
        provider="simulated",
        status=status,
        duration=0.1,
        ttft=0.01,
        chunks=1,
        text_bytes=1,
        usage=usage,
        cost_usd=cost_usd,
    )


async def admitted(quotas: Quotas, user: str = "ada") -> bool:
    """Whether `user` may start a request now; an admitted one ends at once, unmetered."""
    try:
        request = await quotas.admit(spec(user))
    except RequestRateLimited:
        return False
    quotas.release(request, ended())
    return True


# -- requests_per_minute_per_user -------------------------------------------------------


async def test_a_bucket_of_n_requests_lets_exactly_n_through_at_one_instant() -> None:
    quotas = Quotas(LimitPolicy(requests_per_minute_per_user=3), Clock(MIDNIGHT))
    assert [await admitted(quotas) for _ in range(4)] == [True, True, True, False]


async def test_a_request_bucket_left_idle_for_an_hour_still_holds_at_most_n() -> None:
    clock = Clock(MIDNIGHT)
    quotas = Quotas(LimitPolicy(requests_per_minute_per_user=3), clock)
    assert await admitted(quotas)
    clock.now += 3600
    assert [await admitted(quotas) for _ in range(4)] == [True, True, True, False]


async def test_a_wall_clock_stepped_back_does_not_empty_the_buckets() -> None:
    # An NTP step or a resumed VM: the hour "lost" must not be owed by every user.
    clock = Clock(MIDNIGHT + 7200)
    quotas = Quotas(LimitPolicy(requests_per_minute_per_user=3), clock)
    assert await admitted(quotas)
    clock.now -= 3600
    assert [await admitted(quotas) for _ in range(3)] == [True, True, False]


async def test_a_request_refused_by_a_rate_holds_no_stream() -> None:
    quotas = Quotas(LimitPolicy(requests_per_minute_per_user=1), Clock(MIDNIGHT))
    assert await admitted(quotas)
    with pytest.raises(RequestRateLimited):
        await quotas.admit(spec())
    assert quotas.running("ada") == 0


async def test_a_request_refused_by_the_budget_holds_no_stream() -> None:
    quotas = Quotas(LimitPolicy(budget_usd_per_user_per_day=1.0), Clock(MIDNIGHT + 60))
    quotas.release(await quotas.admit(spec()), ended(cost_usd=1.0))
    with pytest.raises(BudgetExceeded):
        await quotas.admit(spec())
    assert quotas.running("ada") == 0


async def test_a_request_that_never_started_gives_its_stream_back() -> None:
    quotas = Quotas(LimitPolicy(max_streams_per_user=1), Clock(MIDNIGHT))
    quotas.release(await quotas.admit(spec()), None)
    assert quotas.running("ada") == 0
    assert await admitted(quotas)


async def test_a_request_refused_before_its_generation_does_not_count_against_the_rate() -> None:
    # Given a bucket of 2 requests a minute, and a request that was admitted but then
    # refused before any generation started (an unknown provider, an open circuit)
    quotas = Quotas(LimitPolicy(requests_per_minute_per_user=2), Clock(MIDNIGHT))
    quotas.release(await quotas.admit(spec()), None)
    # Then two requests that do start still get through, and a third does not
    quotas.release(await quotas.admit(spec()), ended())
    quotas.release(await quotas.admit(spec()), ended())
    assert not await admitted(quotas)


async def test_giving_requests_back_never_fills_a_bucket_past_n() -> None:
    quotas = Quotas(LimitPolicy(requests_per_minute_per_user=1), Clock(MIDNIGHT))
    quotas.release(await quotas.admit(spec()), None)
    quotas.release(spec(), None)  # a release without its admit adds nothing
    quotas.release(await quotas.admit(spec()), ended())
    assert not await admitted(quotas)


# -- tokens_per_minute_per_user ---------------------------------------------------------


async def test_tokens_are_charged_for_the_prompt_and_the_answer() -> None:
    quotas = Quotas(LimitPolicy(tokens_per_minute_per_user=100), Clock(MIDNIGHT))
    request = await quotas.admit(spec())
    quotas.release(request, ended(Usage(prompt_tokens=70, completion_tokens=40)))
    assert not await admitted(quotas)


async def test_a_token_bucket_spent_exactly_to_empty_refuses_until_it_refills() -> None:
    clock = Clock(MIDNIGHT)
    quotas = Quotas(LimitPolicy(tokens_per_minute_per_user=100), clock)
    request = await quotas.admit(spec())
    quotas.release(request, ended(Usage(prompt_tokens=0, completion_tokens=100)))
    with pytest.raises(RequestRateLimited) as refused:
        await quotas.admit(spec())
    # A token comes back every 0.6 s.
    assert refused.value.retry_after == pytest.approx(0.6)
    clock.now += 0.6
    assert await admitted(quotas)


@pytest.mark.parametrize("status", [StreamStatus.CANCELLED, StreamStatus.ERROR])
async def test_a_request_that_did_not_complete_is_charged_the_tokens_it_used(
    status: StreamStatus,
) -> None:
    # Else a client could take whole answers and cancel each just before its end.
    quotas = Quotas(LimitPolicy(tokens_per_minute_per_user=100), Clock(MIDNIGHT))
    request = await quotas.admit(spec())
    quotas.release(request, ended(Usage(prompt_tokens=10, completion_tokens=100), status=status))
    assert not await admitted(quotas)


# -- budget_usd_per_user_per_day ----------------------------------------------------------


async def test_a_spent_budget_holds_until_midnight_utc_and_no_longer() -> None:
    clock = Clock(MIDNIGHT + 3600)
    quotas = Quotas(LimitPolicy(budget_usd_per_user_per_day=1.0), clock)
    quotas.release(await quotas.admit(spec()), ended(cost_usd=1.0))
    clock.now = MIDNIGHT + DAY - 1  # later hours of the same day
    with pytest.raises(BudgetExceeded) as refused:
        await quotas.admit(spec())
    assert refused.value.retry_after == pytest.approx(1)
    clock.now = MIDNIGHT + DAY
    assert await admitted(quotas)


@pytest.mark.parametrize("status", [StreamStatus.CANCELLED, StreamStatus.ERROR])
async def test_a_request_that_did_not_complete_adds_its_cost_to_the_day_s_spend(
    status: StreamStatus,
) -> None:
    quotas = Quotas(LimitPolicy(budget_usd_per_user_per_day=1.0), Clock(MIDNIGHT + 60))
    quotas.release(await quotas.admit(spec()), ended(cost_usd=1.0, status=status))
    with pytest.raises(BudgetExceeded):
        await quotas.admit(spec())


# -- the bound on users tracked -----------------------------------------------------------


async def test_past_the_users_tracked_the_least_recently_seen_is_forgotten_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "MAX_TRACKED", 2)
    quotas = Quotas(LimitPolicy(requests_per_minute_per_user=1), Clock(MIDNIGHT))
    assert await admitted(quotas, "ada")
    assert await admitted(quotas, "bob")
    assert not await admitted(quotas, "ada")  # ada is seen again: bob is now the oldest
    assert await admitted(quotas, "cy")
    # bob's spent bucket went; ada's and cy's, the most recent, are kept.
    assert [await admitted(quotas, user) for user in ("cy", "ada", "bob")] == [
        False,
        False,
        True,
    ]


# -- connections ------------------------------------------------------------------------


async def test_closing_a_connection_twice_uncounts_it_once() -> None:
    connections = Connections(LimitPolicy(max_connections_per_user=2))
    close = await connections.open("ada", None)
    await connections.open("ada", None)
    close()
    close()
    assert connections.total == 1
    await connections.open("ada", None)
    with pytest.raises(TooManyConnections):
        await connections.open("ada", None)


# -- retry-after ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (19.2, "20"), (20.0, "20"), (86_399.5, "86400")],
)
def test_the_retry_after_header_is_whole_seconds_rounded_up_and_at_least_one(
    retry_after: float, header: str
) -> None:
    error = RequestRateLimited("at most 3 requests a minute", retry_after=retry_after)
    assert retry_after_header(error) == {"retry-after": header}
