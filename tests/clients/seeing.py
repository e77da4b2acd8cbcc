"""A server whose providers see images, each answering from a fake upstream that records
what it was sent; and the one small image the client tests send (the same as
`PNG_BASE64` in js/checks.mjs)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.anthropic_upstream import anthropic_answer
from tests.fakes.openai_upstream import ScriptedUpstream, openai_answer
from tests.support.server import RunningServer, running_server
from tokenwire.settings import load_settings

PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
    "rkJggg=="
)
"""A 1x1 transparent PNG."""
PNG_DATA_URL = f"data:image/png;base64,{PNG_BASE64}"
PNG_SOURCE = {"type": "base64", "media_type": "image/png", "data": PNG_BASE64}
"""The PNG as an Anthropic image block's `source`."""

DESCRIPTION = "a red dot"
"""What both fake upstreams answer, in three deltas."""

OPENAI_KEY_ENV = "TOKENWIRE_TEST_OPENAI_KEY"
ANTHROPIC_KEY_ENV = "TOKENWIRE_TEST_ANTHROPIC_KEY"


@dataclass
class Seeing:
    server: RunningServer
    upstreams: dict[str, ScriptedUpstream]
    """By provider name: `oa` (kind openai) and `an` (kind anthropic)."""


def openai_image_urls(body: dict[str, Any]) -> list[str]:
    """The image URLs of the last message of a Chat Completions body."""
    parts = body["messages"][-1]["content"]
    if not isinstance(parts, list):
        return []
    return [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]


def anthropic_image_sources(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The image sources of the last message of a Messages body."""
    blocks = body["messages"][-1]["content"]
    if not isinstance(blocks, list):
        return []
    return [b["source"] for b in blocks if b.get("type") == "image"]


@contextlib.asynccontextmanager
async def seeing_providers(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Seeing]:
    monkeypatch.setenv(OPENAI_KEY_ENV, "sk-test-openai")
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, "sk-ant-test")
    deltas = ["a ", "red ", "dot"]
    async with (
        ScriptedUpstream(openai_answer(deltas, 9, 3)) as oa,
        ScriptedUpstream(anthropic_answer(deltas, 9, 3)) as an,
    ):
        providers = [
            _provider("oa", "openai", oa.url + "/v1", OPENAI_KEY_ENV),
            _provider("an", "anthropic", an.url, ANTHROPIC_KEY_ENV),
        ]
        async with running_server(load_settings(None, {"providers": providers})) as server:
            yield Seeing(server, {"oa": oa, "an": an})


def _provider(name: str, kind: str, base_url: str, key_env: str) -> dict[str, Any]:
    return {"name": name, "kind": kind, "model": "m", "base_url": base_url, "api_key_env": key_env}
