"""Fixtures shared by the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator

import pytest

from tests.fakes.bedrock_server import FakeBedrock, running_fake_bedrock, use_fake_aws_credentials
from tests.support.llama_server import LlamaServer, LlamaServerDied


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake AWS keys in the environment, for botocore's standard credential chain."""
    use_fake_aws_credentials(monkeypatch)


@pytest.fixture
async def fake(aws_credentials: None) -> AsyncIterator[FakeBedrock]:
    """A fake Bedrock runtime on a loopback port."""
    async with running_fake_bedrock() as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A test against llama_cpp.server that fails because the server died says so.

    Otherwise the failure is only what the client saw (`upstream connection failed:
    peer closed connection...`); this names the exit status, the signal, and the
    server's last log lines, with the client's failure as the cause.
    """
    try:
        return (yield)
    except Exception as failure:
        server = getattr(item, "funcargs", {}).get("llama_server")
        if isinstance(server, LlamaServer) and (death := server.death(wait=5.0)) is not None:
            raise LlamaServerDied(death) from failure
        raise
