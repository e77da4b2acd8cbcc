"""What the core is told of each configured provider besides the provider itself."""

from __future__ import annotations

import pytest

from tokenwire.app import provider_profile
from tokenwire.settings import ProviderSettings


def test_the_local_model_serves_as_many_at_once_as_it_has_instances() -> None:
    # More wait in the gateway's bounded queue, not inside the provider, where their wait
    # would count as the model's first-token time and against its health.
    assert provider_profile(ProviderSettings(name="m", kind="local")).max_concurrency == 1
    two = ProviderSettings(name="m", kind="local", options={"parallelism": 2})
    assert provider_profile(two).max_concurrency == 2


def test_a_configured_max_concurrency_wins_over_the_local_model_s_instances() -> None:
    settings = ProviderSettings(
        name="m", kind="local", max_concurrency=3, options={"parallelism": 2}
    )
    assert provider_profile(settings).max_concurrency == 3


@pytest.mark.parametrize("kind", ["openai", "anthropic", "bedrock", "simulated"])
def test_other_providers_have_no_limit_unless_configured(kind: str) -> None:
    assert provider_profile(ProviderSettings(name="p", kind=kind)).max_concurrency is None
    limited = ProviderSettings(name="p", kind=kind, max_concurrency=5)
    assert provider_profile(limited).max_concurrency == 5
