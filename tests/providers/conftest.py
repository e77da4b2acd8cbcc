"""Fixtures shared by the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.bedrock_server import FakeBedrock, running_fake_bedrock, use_fake_aws_credentials


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake AWS keys in the environment, for botocore's standard credential chain."""
    use_fake_aws_credentials(monkeypatch)


@pytest.fixture
async def fake(aws_credentials: None) -> AsyncIterator[FakeBedrock]:
    """A fake Bedrock runtime on a loopback port."""
    async with running_fake_bedrock() as server:
        yield server
