"""The documentation's example configuration is a working configuration."""

import re
from pathlib import Path

import pytest

from tokenwire.providers.registry import build_provider
from tokenwire.settings import load_settings

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_the_example_configuration_loads_and_its_hosted_providers_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)[-1]
    path = tmp_path / "tokenwire.toml"
    path.write_text(example)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    settings = load_settings(path)
    assert {p.kind for p in settings.providers} == {
        "local",
        "simulated",
        "openai",
        "anthropic",
        "bedrock",
    }
    for index, provider in enumerate(settings.providers):
        if provider.kind != "local":
            assert build_provider(provider, index).name == provider.name
