"""The gateway and tool conversations, without sockets: a request that does not answer
exactly the pending calls is refused before it starts; one that does reaches the provider
with each call followed by its result, and the results join the conversation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.providers import WatchedProvider
from tests.support.recording import Inbox
from tests.support.server import simulated_settings
from tests.support.waiting import eventually
from tokenwire.app import gateway_for
from tokenwire.backends.memory import MemoryConversationStore
from tokenwire.core.conversations import answer_turn, pending_calls
from tokenwire.core.gateway import Gateway
from tokenwire.core.provider import ImagePart, Message, TextPart
from tokenwire.core.route import ProviderProfile, ProviderSlot
from tokenwire.core.spec import Generation, RequestSpec
from tokenwire.core.tools import Capabilities, ToolCallPart, ToolResultPart, ToolSpec
from tokenwire.protocol.errors import InvalidRequest

FAST = {"tokens": 5, "delay_ms": 0}
WEATHER = ToolCallPart("call_a1", "get_weather", '{"city": "Paris"}')
CALLER = Capabilities(tools=True, parallel_tool_calls=True, vision=True)


def gateway(provider: WatchedProvider, **limits: Any) -> Gateway:
    slots = {provider.name: ProviderSlot(provider, ProviderProfile(capabilities=CALLER))}
    settings = simulated_settings(
        providers=[{"name": provider.name, "kind": "simulated"}], limits=limits
    )
    return gateway_for(settings, slots)


def request(*turns: Message, request_id: str) -> RequestSpec:
    return RequestSpec(
        user_id="ada",
        messages=turns,
        request_id=request_id,
        conversation_id="c1",
        generation=Generation(options=FAST, tools=(ToolSpec("get_weather"),)),
    )


def results(*pairs: tuple[str, str]) -> Message:
    return Message(role="tool", content="", parts=tuple(ToolResultPart(i, c) for i, c in pairs))


async def asked(gw: Gateway) -> None:
    """A conversation whose last answer called get_weather, not answered yet."""
    await gw.conversations.extend(
        "ada", "c1", (Message(role="user", content="Weather?"), answer_turn("", [WEATHER]))
    )


async def finished(gw: Gateway) -> None:
    await eventually(lambda: not (gw.running or gw._tasks))


async def test_a_new_prompt_while_a_call_is_pending_is_refused_and_leaves_nothing() -> None:
    provider = WatchedProvider("caller")
    gw = gateway(provider)
    await asked(gw)
    with pytest.raises(InvalidRequest, match="results are pending") as caught:
        await gw.start(request(Message(role="user", content="Never mind"), request_id="r1"))
    assert caught.value.request_id == "r1"
    assert await gw.logs.of_user("ada") == []
    assert provider.requests == []
    assert pending_calls(await gw.conversations.history("ada", "c1")) == (WEATHER,)


async def test_results_for_another_call_are_refused() -> None:
    gw = gateway(WatchedProvider("caller"))
    await asked(gw)
    with pytest.raises(InvalidRequest, match="not a pending call"):
        await gw.start(request(results(("call_other", "18 C")), request_id="r1"))


async def test_the_results_reach_the_provider_after_their_call_and_join_the_conversation() -> None:
    provider = WatchedProvider("caller")
    gw = gateway(provider)
    await asked(gw)
    inbox = Inbox()
    (await gw.start(request(results(("call_a1", "18 C")), request_id="r1"))).subscribe(inbox)
    await finished(gw)
    assert [e["status"] for e in inbox.of("stream_end")] == ["completed"]
    sent = provider.requests[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert sent[1].tool_calls == (WEATHER,)
    assert sent[2].tool_results == (ToolResultPart("call_a1", "18 C"),)
    kept = await gw.conversations.history("ada", "c1")
    assert [m.role for m in kept] == ["user", "assistant", "tool", "assistant"]
    assert pending_calls(kept) == ()


async def test_results_reach_the_provider_with_their_call_even_where_image_bounds_cut_history() -> (
    None
):
    # No image fits in a request any more: the history would give up its every turn,
    # but the results cannot go without the call they answer. (A store that kept the
    # turns whole: this one keeps no image bound of its own.)
    provider = WatchedProvider("caller")
    gw = gateway(provider, max_images_per_request=0)
    gw.conversations = MemoryConversationStore(max_tokens=4096)
    image = ImagePart(media_type="image/png", data=b"\x89PNG\r\n\x1a\n")
    question = Message.of_parts("user", (TextPart("Weather where this is?"), image))
    await gw.conversations.extend("ada", "c1", (question, answer_turn("", [WEATHER])))
    await gw.start(request(results(("call_a1", "18 C")), request_id="r1"))
    await finished(gw)
    assert [m.role for m in provider.requests[-1].messages] == ["user", "assistant", "tool"]
