"""Capabilities: the defaults per kind, their overrides in `[[providers]]`, and routing by
them (tools, tool history, parallel calls, response formats), without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from tokenwire.core.conversations import answer_turn
from tokenwire.core.provider import Message
from tokenwire.core.route import ProviderProfile, ProviderSlot
from tokenwire.core.spec import Generation, RequestSpec, Routing
from tokenwire.core.tools import (
    Capabilities,
    NamedTool,
    ResponseFormat,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
)
from tokenwire.protocol.errors import UnsupportedFeature
from tokenwire.providers.simulated import SimulatedProvider
from tokenwire.routing.health import HealthBook, HealthPolicy
from tokenwire.routing.router import RoutingPolicy, StrategyRouter
from tokenwire.settings import ConfigError, ProviderSettings, load_settings

WEATHER = ToolSpec("get_weather")
CALL = ToolCallPart("call_a1", "get_weather", '{"city": "Paris"}')
HOSTED = Capabilities(tools=True, parallel_tool_calls=True, vision=True, structured_output="native")


def slot(name: str, capabilities: Capabilities) -> ProviderSlot:
    provider = SimulatedProvider(ProviderSettings(name=name, kind="simulated"))
    return ProviderSlot(provider, ProviderProfile(capabilities=capabilities))


def router(*slots: ProviderSlot) -> StrategyRouter:
    health = HealthBook(((s.name, None) for s in slots), HealthPolicy())
    return StrategyRouter({s.name: s for s in slots}, health, RoutingPolicy(slots[0].name))


def spec(*turns: Message, provider: str | None = None, **generation: Any) -> RequestSpec:
    return RequestSpec(
        request_id="r",
        user_id="u",
        messages=turns or (Message(role="user", content="Weather in Paris?"),),
        routing=Routing(provider=provider),
        generation=Generation(**generation),
    )


def chosen(r: StrategyRouter, request: RequestSpec) -> set[str]:
    return {c.slot.name for c in r.choose(request).candidates}


# -- capabilities from settings -----------------------------------------------------


def test_capabilities_by_kind_are_the_contract_s() -> None:
    def of(kind: Any) -> Capabilities:
        return ProviderSettings(name="p", kind=kind).capabilities

    assert of("openai") == of("anthropic") == HOSTED
    assert of("bedrock") == Capabilities(True, True, True, "tool")
    assert of("local") == Capabilities(False, False, False, "grammar")
    assert of("simulated") == HOSTED


def test_flat_keys_override_the_kind_s_capabilities() -> None:
    settings = ProviderSettings(
        name="p", kind="openai", tools=False, vision=False, structured_output="none"
    )
    assert settings.capabilities == Capabilities(False, False, False, "none")
    assert ProviderSettings(
        name="p", kind="openai", parallel_tool_calls=False
    ).capabilities == Capabilities(True, False, True, "native")
    assert ProviderSettings(name="p", kind="local", tools=True).capabilities.tools


def test_a_wrong_capability_in_the_file_stops_start_up_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"providers\[0\]\.structured_output"):
        load_settings(
            None, {"providers": [{"name": "p", "kind": "openai", "structured_output": "magic"}]}
        )
    with pytest.raises(ConfigError, match=r"parallel_tool_calls: true needs tools = true"):
        load_settings(
            None,
            {
                "providers": [
                    {"name": "p", "kind": "openai", "tools": False, "parallel_tool_calls": True}
                ]
            },
        )


# -- routing --------------------------------------------------------------------


def test_a_request_with_tools_goes_only_to_providers_that_call_tools() -> None:
    r = router(slot("local", Capabilities()), slot("hosted", HOSTED))
    assert chosen(r, spec(tools=(WEATHER,))) == {"hosted"}
    assert chosen(r, spec()) == {"local", "hosted"}


def test_tool_history_alone_needs_a_tools_provider_too() -> None:
    r = router(slot("local", Capabilities()), slot("hosted", HOSTED))
    history = (
        Message(role="user", content="Weather?"),
        answer_turn("", [CALL]),
        Message(role="tool", content="", parts=(ToolResultPart("call_a1", "18 C"),)),
    )
    assert chosen(r, spec(*history)) == {"hosted"}


def test_a_provider_without_parallel_calls_takes_a_tools_request_told_not_to() -> None:
    serial = slot("serial", Capabilities(tools=True))
    r = router(serial, slot("hosted", HOSTED))
    request = spec(tools=(WEATHER,), tool_choice=NamedTool("get_weather"))
    assert chosen(r, request) == {"serial", "hosted"}
    sent = serial.provider_request(request)
    assert sent.parallel_tool_calls is False
    assert sent.tools == (WEATHER,)
    assert sent.tool_choice == NamedTool("get_weather")
    hosted = r.choose(spec(provider="hosted", tools=(WEATHER,))).slot
    assert hosted.provider_request(spec(tools=(WEATHER,))).parallel_tool_calls is None
    assert (
        hosted.provider_request(
            spec(tools=(WEATHER,), parallel_tool_calls=False)
        ).parallel_tool_calls
        is False
    )


def test_a_slot_builds_each_spec_s_own_request_however_they_alternate() -> None:
    # The request built last is kept for the spec it was built from, and for no other.
    serial = slot("serial", Capabilities(tools=True))
    plain, with_tools = spec(max_tokens=7), spec(tools=(WEATHER,), max_tokens=9)
    first = serial.provider_request(plain)
    assert serial.provider_request(plain) is first
    for asked in (with_tools, plain, with_tools, spec(max_tokens=7)):
        sent = serial.provider_request(asked)
        assert sent.max_tokens == asked.generation.max_tokens
        assert sent.tools == asked.generation.tools
        assert sent.parallel_tool_calls is (False if asked.generation.tools else None)


def test_no_tools_provider_to_choose_is_unsupported_feature() -> None:
    r = router(slot("local", Capabilities()))
    with pytest.raises(UnsupportedFeature, match="no provider that routing may choose calls"):
        r.choose(spec(tools=(WEATHER,)))


def test_tools_forced_on_a_provider_that_cannot_call_them_are_refused() -> None:
    r = router(slot("hosted", HOSTED), slot("local", Capabilities()))
    with pytest.raises(UnsupportedFeature) as caught:
        r.choose(spec(provider="local", tools=(WEATHER,)))
    assert str(caught.value) == (
        "provider local does not call tools; name one that does or use auto"
    )
    assert r.choose(spec(provider="hosted", tools=(WEATHER,))).slot.name == "hosted"


def test_a_response_format_goes_only_to_providers_with_structured_output() -> None:
    r = router(slot("plain", Capabilities()), slot("hosted", HOSTED))
    request = spec(response_format=ResponseFormat("json_object"))
    assert chosen(r, request) == {"hosted"}
    with pytest.raises(UnsupportedFeature, match="does not produce structured output"):
        r.choose(spec(provider="plain", response_format=ResponseFormat("json_object")))
