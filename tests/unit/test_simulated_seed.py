"""The simulated provider's answer is a function of the conversation and its options:
the seed of its random words must stay what it has always been (a sha256 of their JSON),
however it is computed."""

from __future__ import annotations

import hashlib
import json

import pytest

from tokenwire.core.provider import Message, ProviderRequest
from tokenwire.providers.simulated import ScriptedCall, SimulatedOptions, _seed


def reference_seed(request: ProviderRequest, options: SimulatedOptions) -> int:
    material = json.dumps(
        [[m.role, m.content] for m in request.messages] + [options.model_dump()],
        sort_keys=True,
    )
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big")


@pytest.mark.parametrize(
    "messages",
    [
        (),
        (Message(role="user", content="Explain how token streaming works."),),
        (
            Message(role="system", content='be "brief"\n\t'),
            Message(role="user", content="ünïcode, [brackets], {braces}"),
            Message(role="assistant", content=""),
        ),
    ],
)
@pytest.mark.parametrize(
    "options",
    [
        SimulatedOptions(),
        SimulatedOptions(tokens=5, delay_ms=0, text_before="a, b: c"),
        SimulatedOptions(tool_calls=[ScriptedCall(name="f", arguments={"z": 1, "a": [2]})]),
    ],
)
def test_the_seed_is_the_sha256_of_the_turns_and_options_json(
    messages: tuple[Message, ...], options: SimulatedOptions
) -> None:
    request = ProviderRequest(messages=messages)
    assert _seed(request, options) == reference_seed(request, options)
    assert _seed(request, options) == reference_seed(request, options)  # memo used
