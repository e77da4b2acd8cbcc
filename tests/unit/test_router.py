"""Routing: a forced provider, strengths, the default, and the strategy reported."""

from typing import Any

import pytest

from tokenwire.core.provider import Message
from tokenwire.core.route import ProviderProfile, ProviderSlot
from tokenwire.core.spec import RequestSpec, Routing
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.messages import RoutingStrategy
from tokenwire.providers.simulated import SimulatedProvider
from tokenwire.routing.classify import TaskType, classify
from tokenwire.routing.router import StrengthRouter
from tokenwire.settings import ProviderSettings


def slot(name: str, strengths: list[str] | None = None) -> ProviderSlot:
    settings = ProviderSettings(name=name, kind="simulated")
    return ProviderSlot(
        SimulatedProvider(settings), ProviderProfile(strengths=tuple(strengths or ()))
    )


def spec(prompt: str, **routing: Any) -> RequestSpec:
    return RequestSpec(
        request_id="r",
        user_id="u",
        messages=(Message(role="user", content=prompt),),
        routing=Routing(**routing),
    )


ROUTER = StrengthRouter(
    {"general": slot("general"), "coder": slot("coder", ["code"])},
    "general",
    RoutingStrategy.COST_OPTIMIZED,
)


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("Write a Python function that sorts a list", TaskType.CODE),
        ("Please summarize this article", TaskType.SUMMARIZATION),
        ("Translate this into French", TaskType.TRANSLATION),
        ("Analyze the quarterly numbers", TaskType.ANALYSIS),
        ("Write a poem about the sea", TaskType.CREATIVE),
        ("hello there", TaskType.CONVERSATION),
    ],
)
def test_classification_by_keywords(text: str, task: TaskType) -> None:
    assert classify(text) is task


def test_a_task_goes_to_a_provider_strong_at_it() -> None:
    route = ROUTER.choose(spec("fix this python bug"))
    assert (route.slot.name, route.task_type) == ("coder", "code")


def test_other_tasks_go_to_the_default() -> None:
    assert ROUTER.choose(spec("tell me about your day")).slot.name == "general"


def test_a_forced_provider_wins_over_strengths() -> None:
    assert ROUTER.choose(spec("fix this python bug", provider="general")).slot.name == "general"


def test_an_unknown_forced_provider_is_an_invalid_request_listing_the_known_ones() -> None:
    with pytest.raises(InvalidRequest, match="known: coder, general"):
        ROUTER.choose(spec("hi", provider="ghost"))


def test_the_strategy_is_the_request_s_or_else_the_server_s() -> None:
    assert ROUTER.choose(spec("hi")).strategy is RoutingStrategy.COST_OPTIMIZED
    chosen = ROUTER.choose(spec("hi", strategy=RoutingStrategy.PERFORMANCE_BASED))
    assert chosen.strategy is RoutingStrategy.PERFORMANCE_BASED
