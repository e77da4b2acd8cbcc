"""Fixtures shared by the client tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.clients.seeing import Seeing, seeing_providers


@pytest.fixture
async def seeing(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Seeing]:
    """A server whose providers `oa` (OpenAI) and `an` (Anthropic) see images, each
    answering "a red dot" from a fake upstream that records what it was sent."""
    async with seeing_providers(monkeypatch) as providers:
        yield providers
