"""Building providers from their `[[providers]]` tables."""

from __future__ import annotations

import importlib

from tokenwire.core.provider import Provider
from tokenwire.protocol.errors import TokenwireError
from tokenwire.settings import ConfigError, ProviderKind, ProviderSettings

# Imported lazily: a server that serves no local model never loads llama.cpp.
_CLASSES: dict[ProviderKind, str] = {
    "simulated": "tokenwire.providers.simulated:SimulatedProvider",
    "openai": "tokenwire.providers.openai_chat:OpenAIProvider",
    "anthropic": "tokenwire.providers.anthropic_messages:AnthropicProvider",
    "bedrock": "tokenwire.providers.bedrock:BedrockProvider",
    "local": "tokenwire.providers.local:LocalProvider",
}


def build_provider(settings: ProviderSettings, index: int) -> Provider:
    module_name, _, class_name = _CLASSES[settings.kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        provider: Provider = cls(settings)
    except (TokenwireError, ValueError) as exc:
        raise ConfigError(f"providers[{index}] ({settings.name}): {exc}") from None
    return provider
