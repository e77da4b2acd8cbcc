"""Building providers from their `[[providers]]` tables."""

from __future__ import annotations

import importlib

from tokenwire.core.provider import Provider
from tokenwire.protocol.errors import TokenwireError
from tokenwire.providers.images import FetchPolicy, ImageFetcher
from tokenwire.settings import ConfigError, ProviderKind, ProviderSettings

# Imported lazily: a server that serves no local model never loads llama.cpp.
_CLASSES: dict[ProviderKind, str] = {
    "simulated": "tokenwire.providers.simulated:SimulatedProvider",
    "openai": "tokenwire.providers.openai_chat:OpenAIProvider",
    "anthropic": "tokenwire.providers.anthropic_messages:AnthropicProvider",
    "bedrock": "tokenwire.providers.bedrock:BedrockProvider",
    "local": "tokenwire.providers.local:LocalProvider",
}


def build_provider(
    settings: ProviderSettings, index: int, fetch: FetchPolicy | None = None
) -> Provider:
    """The provider of one table; `fetch` bounds the images it fetches (those that do)."""
    module_name, _, class_name = _CLASSES[settings.kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    # Only bedrock needs image bytes; the others pass an https URL on to the provider.
    extra = {"fetcher": ImageFetcher(fetch or FetchPolicy())} if settings.kind == "bedrock" else {}
    try:
        provider: Provider = cls(settings, **extra)
    except (TokenwireError, ValueError) as exc:
        raise ConfigError(f"providers[{index}] ({settings.name}): {exc}") from None
    return provider


def default_concurrency(settings: ProviderSettings) -> int | None:
    """Streams at once on this provider when `max_concurrency` is not set.

    A model run in this process serves `parallelism` generations at once. The rest are
    better queued in the core, which bounds the wait (`queue_timeout_seconds`, then
    `provider_busy`) and leaves it out of the provider's health, than inside the
    provider, where a long wait reads as a provider that never sends its first token
    and opens its circuit. Remote providers queue nothing of ours: no limit.
    """
    if settings.max_concurrency is not None or settings.kind != "local":
        return settings.max_concurrency
    parallelism = settings.options.get("parallelism", 1)
    return parallelism if isinstance(parallelism, int) else 1
