"""The documentation's example configuration is a working configuration."""

import re
from pathlib import Path

import pytest

from tests.support.server import simulated_settings
from tokenwire.app import build_app
from tokenwire.providers.registry import build_provider
from tokenwire.settings import load_settings
from tokenwire.transports.http import endpoints

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


@pytest.mark.parametrize(
    "table", ["server", "streams", "routing", "auth", "limits", "logging", "metrics"]
)
def test_every_key_of_a_table_is_documented_with_its_default(table: str) -> None:
    from tokenwire.settings import Settings

    section = re.search(rf"## `\[{table}\]`.*?(?=\n## )", DOCS.read_text(), re.S)
    assert section is not None, f"docs/configuration.md has no [{table}] section"
    model = Settings.model_fields[table].annotation
    assert model is not None
    for key in model.model_fields:  # type: ignore[union-attr]
        assert f"| `{key}` |" in section.group(0), f"{table}.{key} is not in its table"


def test_the_security_guide_s_configurations_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    guide = (DOCS.parent / "security.md").read_text()
    examples = re.findall(r"```toml\n(.*?)```", guide, re.S)
    assert len(examples) == 2
    for number, example in enumerate(examples):
        path = tmp_path / f"example-{number}.toml"
        path.write_text(example)
        settings = load_settings(path)
        assert settings.auth.mode in ("jwt", "api_key")


def test_every_endpoint_the_docs_name_is_served_with_that_method() -> None:
    def shape(path: str) -> str:
        return re.sub(r"\{[^}]*\}", "{}", path.split("?")[0])

    served = {
        shape(path): entry["methods"]
        for path, entry in endpoints(build_app(simulated_settings()).routes).items()
    }
    texts = [DOCS.parents[1] / "README.md", *DOCS.parent.glob("*.md")]
    named = {
        (method, shape(path), text.name)
        for text in texts
        for method, path in re.findall(r"`(GET|POST|DELETE) (/[^` ]*)`", text.read_text())
    }
    assert named
    assert [n for n in sorted(named) if n[0] not in served.get(n[1], [])] == []


ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_every_relative_link_and_image_of_a_page_exists(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if "://" not in t and not t.startswith(("#", "/"))]
    missing = [t for t in local if t and not (page.parent / t).exists()]
    assert missing == []
